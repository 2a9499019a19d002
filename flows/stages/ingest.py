"""Stage 1, ingest: read a dataset, record its manifest in the store, return a reference."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from prefect import task
from pydantic import BaseModel, ConfigDict, Field

from maskbank.flows.keys import digest
from maskbank.flows.refs import DatasetRef
from maskbank.storage.datasets import Dataset, DatasetSpec, ImageRecord, image_size, open_dataset
from maskbank.storage.datasets.hashing import FileHasher, default_hash_cache
from maskbank.storage.layout import image_key
from maskbank.storage.store import Store


class DatasetInput(BaseModel):
    """Where a dataset is and how to read it (see ``maskbank.storage.datasets.DatasetSpec``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="COCO root or instances json, VOC root, images/ + masks/ folder, image folder, or labels file (.csv/.json).")
    format: str = Field("auto", description="auto, coco, voc, masks or folder.")
    split: str | None = Field(None, description="COCO split (train2017) or VOC image set (train, val).")
    images: str | None = Field(None, description="Images folder, when not the format's default.")
    labels: str | None = Field(None, description="Labels file (VOC, folder).")
    rename: dict[str, str] = Field(default_factory=dict, description="Rename or merge classes: {source name: new name}.")
    skip_unknown: bool = Field(False, description="Drop unknown class names in a labels file instead of failing.")
    classes: list[str] | str | None = Field(None, description="Class list (names, or a classes.txt/.json file) of a folder, masks or VOC-layout dataset, instead of its own.")
    ignore_index: int | None = Field(None, description="Mask value of pixels to ignore (masks datasets; unset: 255).")
    background: bool | None = Field(None, description="Whether the class list has a background class (unset: detected from a class named 'background').")

    @property
    def name_hint(self) -> str:
        """A short name for run titles: the path's last part (and split)."""
        return Path(self.path).name + (f":{self.split}" if self.split else "")

    def spec(self) -> DatasetSpec:
        d = self.model_dump(exclude_none=True)
        return DatasetSpec.from_dict({k: v for k, v in d.items() if v != {}})


def _image_hw(record: ImageRecord, exif_transpose: bool) -> tuple[int, int]:
    if record.height is not None and record.width is not None:
        return record.height, record.width
    return image_size(record.path, exif_transpose=exif_transpose)


def content_keys(ds: Dataset, hash_cache: Path, save: bool = True) -> list[str]:
    """The content key of each of the dataset's images (its file's sha256, orientation and size); file
    hashes are read from and, with ``save``, written to the cache ``hash_cache``."""
    hasher = FileHasher(hash_cache)
    keys = [image_key(hasher.sha256(r.path), ds.exif_transpose, _image_hw(r, ds.exif_transpose)) for r in ds.records]
    if save:
        hasher.save()
    return keys


@task(name="ingest", task_run_name="ingest-{dataset.name_hint}")
def ingest(dataset: DatasetInput, store: str, verify: bool = False) -> DatasetRef:
    """Read ``dataset``, write its manifest, and return a reference with per-image content keys.

    Runs every time (it is how changes to the images or labels are noticed); file hashes are cached by
    size and modification time beside the dataset, so an unchanged dataset costs a directory walk.
    With ``verify`` a stored manifest that no longer matches its content hash is written again.
    """
    st = Store.open(store)
    ds = open_dataset(dataset.spec())
    hash_cache = default_hash_cache(ds.root)
    keys = content_keys(ds, hash_cache)
    if verify and not st.item_complete(st.manifest_path(ds.fingerprint(hash_cache)), verify=True):
        st.delete_paths([st.manifest_path(ds.fingerprint(hash_cache))])
    fp = st.write_manifest(ds, keys, hash_cache)
    return DatasetRef(
        store=st.url, fingerprint=fp, name=ds.name, class_names=ds.class_names,
        image_ids=ds.image_ids, image_keys=keys, paths=[str(Path(r.path)) for r in ds.records],
        exif_transpose=[ds.exif_transpose] * len(ds.records), labels=[None if r.labels is None else list(r.labels) for r in ds.records],
        has_truth=[r.has_truth for r in ds.records], has_background=ds.has_background, skipped=list(ds.skipped),
        notes=list(ds.notes),
    )


def combine(refs: list[DatasetRef]) -> DatasetRef:
    """One collection from several datasets with the same classes (image ids must not clash)."""
    if len(refs) == 1:
        return refs[0]
    first = refs[0]
    for r in refs[1:]:
        if r.class_names != first.class_names:
            raise ValueError(
                f"datasets {first.name!r} and {r.name!r} have different class lists; rename classes to match"
            )
        if r.has_background != first.has_background:
            raise ValueError(f"datasets {first.name!r} and {r.name!r} differ in whether their classes include "
                             "background; set `background` on one of them")
    ids = [i for r in refs for i in r.image_ids]
    dup = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dup:
        raise ValueError(f"image ids occur in more than one dataset: {dup[:5]}")

    def cat(field: str) -> list:
        return [v for r in refs for v in getattr(r, field)]

    return DatasetRef(
        store=first.store, fingerprint=digest(sorted(r.fingerprint for r in refs))[:64],
        name="+".join(r.name for r in refs), class_names=first.class_names, image_ids=ids,
        image_keys=cat("image_keys"), paths=cat("paths"), exif_transpose=cat("exif_transpose"),
        labels=cat("labels"), has_truth=cat("has_truth"), has_background=first.has_background,
        skipped=cat("skipped"), notes=cat("notes"),
        parts=[r.fingerprint for r in refs],
    )
