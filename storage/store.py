"""The maskbank store: one Zarr v3 group on a local filesystem holding everything a run produces.

Layout (every array carries ``dimension_names``, so ``xarray.open_zarr(path, group=...)`` reads any item)::

    <store>/                              root group, attrs {"maskbank_store": 1}
      datasets/<fingerprint>/manifest     one dataset's manifest (item):
                                            arrays image[image] (str), class[class] (str),
                                            labels[image, class] uint8 multi-hot (column 0 = background, 0),
                                            labelled[image] bool, has_truth[image] bool,
                                            height[image], width[image] int32 (-1 = unknown);
                                            attrs name, root, fingerprint, class_names, image_ids, labels
                                            (lists, null = unlabelled), sizes, has_truth, paths, exif_transpose
      proposals/<stage_key>/<image>       one image's mask proposals (item): rle[mask] str (pycocotools
                                            compressed counts), predicted_iou[mask], stability_score[mask]
                                            float32, bbox[mask, xywh] int32, area[mask] int64;
                                            attrs image_hw, image_id
      features/<stage_key>/<image>        one image's patch features (item): features[y, x, channel]
                                            float16, one chunk; attrs image_hw, resized_hw, patch_size,
                                            grid_hw (a PatchGeometry), image_id
      <stage>/<stage_key>/<image>         any other per-image stage output, via write_item
      versions/<version_id>               published outputs, see ``maskbank.storage.versions``
      _staging/                           items being written or deleted (never read)
      _locks/<name>/                      named locks, see ``maskbank.storage.locks``

``<stage_key>`` is a hash the caller computes from the stage's parameters and code version. ``<image>`` is
the image id percent-encoded into one path segment (``a/b.jpg`` -> ``a%2Fb.jpg``).

How items are written, completed and verified is :mod:`maskbank.storage.items`; this module adds what each
stage stores in its items (proposals, features) and the dataset manifests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskbank.storage.datasets.manifest import Dataset, ImageRecord
from maskbank.storage.items import (
    STAGING_GROUP,
    STORE_FORMAT,
    Item,
    ItemStore,
    MissingItemError,
    NotAStoreError,
    checked_key,
    decode_id,
    encode_id,
)
from maskbank.tasks import rle
from maskbank.tasks.geometry import PatchGeometry
from maskbank.tasks.proposals import Proposals

__all__ = [
    "FEATURES", "PROPOSALS", "STAGING_GROUP", "STORE_FORMAT", "Item", "Manifest", "MissingItemError",
    "NotAStoreError", "Store", "decode_id", "encode_id",
]

PROPOSALS = "proposals"
FEATURES = "features"


@dataclass(frozen=True)
class Manifest:
    """A dataset as recorded in a store (no truth reader): what a stage needs to know about its images."""

    fingerprint: str
    name: str
    root: Path
    class_names: list[str]
    records: list[ImageRecord]
    exif_transpose: bool

    @property
    def image_ids(self) -> list[str]:
        return [r.image_id for r in self.records]


class Store(ItemStore):
    """A maskbank store: items (see :class:`~maskbank.storage.items.ItemStore`) plus the typed items of the
    proposal and feature stages and the dataset manifests. Create with :meth:`open`."""

    def write_proposals(
        self,
        key: str,
        image_id: str,
        rles: Sequence[Mapping],
        predicted_iou: np.ndarray | None = None,
        stability_score: np.ndarray | None = None,
        bbox: np.ndarray | None = None,
        area: np.ndarray | None = None,
        image_hw: tuple[int, int] | None = None,
        attrs: Mapping | None = None,
        overwrite: bool = False,
    ) -> str:
        """Store one image's proposals: compressed COCO RLEs of one ``image_hw`` and per-mask values.

        Missing scores are stored as NaN; missing ``bbox`` (xywh) and ``area`` are measured from the RLEs.
        ``image_hw`` is required when there are no proposals.
        """
        n = len(rles)
        hw = _rle_size(rles) if n else None
        if image_hw is not None and hw not in (None, tuple(image_hw)):
            raise ValueError(f"image_hw {tuple(image_hw)} != RLE size {hw}")
        hw = hw or (tuple(int(v) for v in image_hw) if image_hw is not None else None)
        if hw is None:
            raise ValueError("no proposals: give image_hw")
        coded = [{"size": list(hw), "counts": _counts_str(r["counts"])} for r in rles]
        bbox = rle.bbox(coded) if bbox is None else np.rint(np.asarray(bbox, np.float64)).astype(np.int32)
        area = rle.area(coded) if area is None else np.asarray(area, np.int64)
        arrays = {
            "rle": np.array([c["counts"] for c in coded], dtype=np.dtypes.StringDType()),
            "predicted_iou": _per_mask("predicted_iou", predicted_iou, n),
            "stability_score": _per_mask("stability_score", stability_score, n),
            "bbox": bbox.reshape(n, 4),
            "area": area.reshape(n),
        }
        dims = {"rle": ("mask",), "predicted_iou": ("mask",), "stability_score": ("mask",), "bbox": ("mask", "xywh"),
                "area": ("mask",)}
        item_attrs = {**(attrs or {}), "image_hw": list(hw)}
        return self.write_image_item(PROPOSALS, key, image_id, arrays, item_attrs, dims, overwrite)

    def read_proposals(self, key: str, image_id: str, verify: bool = True) -> Proposals:
        item = self.read_image_item(PROPOSALS, key, image_id, verify)
        hw = tuple(int(v) for v in item.attrs["image_hw"])
        rles = [{"size": list(hw), "counts": s} for s in item.arrays["rle"].tolist()]
        a = item.arrays
        return Proposals(rles, a["predicted_iou"], a["stability_score"], a["bbox"], a["area"], hw)

    def write_features(
        self,
        key: str,
        image_id: str,
        features: np.ndarray,
        geometry: PatchGeometry,
        attrs: Mapping | None = None,
        overwrite: bool = False,
    ) -> str:
        """Store one image's ``[Hp, Wp, C]`` patch features as float16 with its :class:`PatchGeometry`."""
        f = np.asarray(features)
        if f.ndim != 3 or f.shape[:2] != tuple(geometry.grid_hw):
            raise ValueError(f"features {f.shape} do not match the token grid {geometry.grid_hw} (need [Hp, Wp, C])")
        if f.size and not (np.isfinite(f).all() and np.abs(f).max() <= np.finfo(np.float16).max):
            raise ValueError("features must be finite and within float16 range (+-65504)")
        f16 = f.astype(np.float16)
        geo = {
            "image_hw": list(geometry.image_hw),
            "resized_hw": list(geometry.resized_hw),
            "patch_size": int(geometry.patch_size),
            "grid_hw": list(geometry.grid_hw),
        }
        return self.write_image_item(
            FEATURES, key, image_id, {"features": f16}, {**(attrs or {}), **geo},
            {"features": ("y", "x", "channel")}, overwrite,
        )

    def read_features(self, key: str, image_id: str, verify: bool = True) -> tuple[np.ndarray, PatchGeometry]:
        """``(features float16 [Hp, Wp, C], geometry)``."""
        item = self.read_image_item(FEATURES, key, image_id, verify)
        a = item.attrs
        geometry = PatchGeometry(
            tuple(a["image_hw"]), tuple(a["resized_hw"]), int(a["patch_size"]), tuple(a["grid_hw"])
        )
        return item.arrays["features"], geometry

    # ----- dataset manifests ---------------------------------------------------------------------

    def write_manifest(self, dataset: Dataset, hash_cache: str | Path | None = None) -> str:
        """Record ``dataset`` under ``datasets/<fingerprint>/manifest`` (once); returns the fingerprint."""
        fp = dataset.fingerprint(hash_cache)
        recs = dataset.records
        k = len(dataset.class_names)
        multi_hot = np.zeros((len(recs), k), np.uint8)
        for i, r in enumerate(recs):
            multi_hot[i, list(r.labels or ())] = 1
        root = Path(dataset.root).absolute()
        arrays = {
            "image": np.array([r.image_id for r in recs], dtype=np.dtypes.StringDType()),
            "class": np.array(dataset.class_names, dtype=np.dtypes.StringDType()),
            "labels": multi_hot,
            "labelled": np.array([r.labels is not None for r in recs], bool),
            "has_truth": np.array([r.has_truth for r in recs], bool),
            "height": np.array([-1 if r.height is None else r.height for r in recs], np.int32),
            "width": np.array([-1 if r.width is None else r.width for r in recs], np.int32),
        }
        dims = {"image": ("image",), "class": ("class",), "labels": ("image", "class"), "labelled": ("image",),
                "has_truth": ("image",), "height": ("image",), "width": ("image",)}
        attrs = {
            "name": dataset.name,
            "root": str(root),
            "fingerprint": fp,
            "class_names": dataset.class_names,
            "image_ids": [r.image_id for r in recs],
            "labels": [None if r.labels is None else list(r.labels) for r in recs],
            "sizes": [None if r.height is None else [r.height, r.width] for r in recs],
            "has_truth": [r.has_truth for r in recs],
            "paths": [_relative_to(r.path, root) for r in recs],
            "exif_transpose": dataset.exif_transpose,
        }
        self.write_item(self.manifest_path(fp), arrays, attrs, dims)
        return fp

    @staticmethod
    def manifest_path(fingerprint: str) -> str:
        """Store path of a dataset's manifest item."""
        return f"datasets/{checked_key(fingerprint)}/manifest"

    def read_manifest(self, fingerprint: str) -> Manifest:
        item = self.read_item(self.manifest_path(fingerprint))
        a = item.attrs
        root = Path(a["root"])
        records = [
            ImageRecord(
                image_id, root / p, None if lab is None else tuple(lab),
                None if size is None else size[0], None if size is None else size[1], bool(t),
            )
            for image_id, p, lab, size, t in zip(
                a["image_ids"], a["paths"], a["labels"], a["sizes"], a["has_truth"], strict=True
            )
        ]
        return Manifest(a["fingerprint"], a["name"], root, list(a["class_names"]), records, bool(a["exif_transpose"]))

    def list_manifests(self) -> list[str]:
        """Fingerprints of the datasets recorded in this store."""
        return [fp for fp in self.list_groups("datasets") if self._mark(f"datasets/{fp}/manifest") is not None]


def _relative_to(path: Path, root: Path) -> str:
    p = Path(path).absolute()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _rle_size(rles: Sequence[Mapping]) -> tuple[int, int]:
    sizes = {tuple(int(v) for v in r["size"]) for r in rles}
    if len(sizes) != 1:
        raise ValueError(f"proposals of one image must share one RLE size, got {sorted(sizes)}")
    return sizes.pop()


def _counts_str(counts: object) -> str:
    if isinstance(counts, bytes):
        return counts.decode("ascii")
    if isinstance(counts, str):
        return counts
    raise TypeError("RLE counts must be compressed (str or bytes, as from pycocotools.mask.encode)")


def _per_mask(name: str, values: np.ndarray | None, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan, np.float32)
    a = np.asarray(values, np.float32)
    if a.shape != (n,):
        raise ValueError(f"{name} must have one value per mask ({n}), got shape {a.shape}")
    return a
