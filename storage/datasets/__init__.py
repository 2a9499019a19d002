"""Dataset readers (COCO, PASCAL VOC, folder + labels file, class-index masks) into one :class:`Dataset` type."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from maskbank.storage.datasets.classes import BACKGROUND, ClassMap, DatasetError
from maskbank.storage.datasets.coco import find_coco, read_coco
from maskbank.storage.datasets.folder import read_folder
from maskbank.storage.datasets.images import MAX_WORKING_PIXELS, ImageError, image_size, load_rgb, working_size
from maskbank.storage.datasets.manifest import Dataset, ImageRecord
from maskbank.storage.datasets.masks import is_masks, read_masks
from maskbank.storage.datasets.voc import VOC_CLASSES, is_voc, read_voc

Format = Literal["auto", "coco", "voc", "folder", "masks"]

__all__ = [
    "BACKGROUND", "MAX_WORKING_PIXELS", "ClassMap", "Dataset", "DatasetError", "DatasetSpec", "ImageError",
    "ImageRecord", "VOC_CLASSES", "detect_format", "image_size", "load_rgb", "open_dataset", "reopen_dataset",
    "working_size",
]


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset is and how to read it.

    ``path``: a COCO root (with ``annotations/instances_<split>.json``) or instances json, a VOC root, a
    folder of images, a labels file (``.csv``/``.json``) beside its images, or a masks folder (``images/``,
    ``masks/`` and ``classes.txt``/``classes.json``). ``format="auto"`` detects which. ``images`` overrides
    the images folder (COCO, folder, masks); ``labels`` names a labels file (VOC, folder, masks);
    ``classes`` fixes a folder's class list, or a masks or VOC dataset's list by mask value (list or text
    file); ``rename`` maps source class names to new ones (two names to one merge; ``"background"`` folds a
    class into background); ``skip_unknown`` drops unknown label names instead of raising.
    ``ignore_index`` is the mask value of ignored pixels (masks; ``None``: 255); ``background`` says
    whether a class list has a background class (masks, VOC with a class list; ``None``: a class named
    ``background`` or ``_background_`` is it, see ``Dataset.has_background``; COCO: ``False`` makes pixels
    in no annotation ignore, for categories that cover every pixel).
    """

    path: Path
    format: Format = "auto"
    split: str | None = None
    images: Path | None = None
    labels: Path | None = None
    classes: tuple[str, ...] | Path | None = None
    rename: Mapping[str, str] = field(default_factory=dict)
    skip_unknown: bool = False
    ignore_index: int | None = None
    background: bool | None = None
    name: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping) -> DatasetSpec:
        """Spec from a plain mapping (e.g. flow parameters); unknown keys raise."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DatasetError(f"unknown dataset spec keys {unknown}; known: {sorted(known)}")
        if "path" not in d:
            raise DatasetError("a dataset spec needs 'path'")
        return _normalise(cls(**d))

    def to_dict(self) -> dict:
        """The spec as a JSON-ready mapping with absolute paths (:meth:`from_dict` reads it back)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("path", "images", "labels", "classes"):
            if isinstance(d[key], Path):
                d[key] = str(d[key].absolute())
        d["classes"] = list(d["classes"]) if isinstance(d["classes"], tuple) else d["classes"]
        d["rename"] = dict(d["rename"])
        return d


def open_dataset(path_or_spec: str | Path | DatasetSpec | Mapping, **options) -> Dataset:
    """Read a dataset from a path, a :class:`DatasetSpec` or its dict form; ``options`` set spec fields."""
    spec = _spec(path_or_spec, options)
    if spec.format == "auto":
        spec = replace(spec, format=detect_format(spec.path))
    dataset = _read(spec)
    dataset.spec = spec.to_dict()
    return dataset


def reopen_dataset(spec: Mapping | None, root: Path, name: str, class_names: Sequence[str]) -> Dataset:
    """A dataset a store recorded, read again: as its recorded ``spec`` says (``Dataset.spec``); for stores
    that recorded none, a VOC root at ``root``, or a COCO images folder ``root`` with
    ``annotations/instances_<name or folder name>.json`` beside it. Raises :class:`DatasetError`, also when
    it no longer reads with the recorded ``class_names`` (its truth would not match the store's indices)."""
    dataset = _reopen(spec, Path(root), name)
    if dataset.class_names != list(class_names):
        raise DatasetError("it now reads with other class names than were recorded (were the classes renamed at "
                           "ingest?); its truth would not match the store's class indices")
    return dataset


def _reopen(spec: Mapping | None, root: Path, name: str) -> Dataset:
    if spec is not None:
        return open_dataset(spec)
    if is_voc(root):
        return open_dataset(DatasetSpec(path=root, format="voc", split=name.removeprefix("voc-") if name.startswith("voc-") else None))
    for base in (root.parent, root.parent.parent):
        for split in dict.fromkeys((name, root.name)):
            ann = base / "annotations" / f"instances_{split}.json"
            if ann.is_file():
                return open_dataset(DatasetSpec(path=ann, format="coco", images=root))
    raise DatasetError(f"{root} is neither a VOC root nor a COCO images folder with annotations/instances_<split>.json beside it")


def _spec(path_or_spec: str | Path | DatasetSpec | Mapping, options: Mapping) -> DatasetSpec:
    if isinstance(path_or_spec, DatasetSpec):
        spec = _normalise(replace(path_or_spec, **options)) if options else path_or_spec
    elif isinstance(path_or_spec, Mapping):
        spec = DatasetSpec.from_dict({**path_or_spec, **options})
    else:
        spec = DatasetSpec.from_dict({"path": path_or_spec, **options})
    return spec


def _read(spec: DatasetSpec) -> Dataset:
    fmt = spec.format
    for option, formats in _FORMAT_OPTIONS.items():
        if getattr(spec, option) is not None and fmt not in formats:
            raise DatasetError(f"{option} applies to {' and '.join(formats)} datasets only, not {fmt}")
    if fmt == "coco":
        ann, images = find_coco(spec.path, spec.split, spec.images)
        return read_coco(ann, images, rename=spec.rename, name=spec.name, background=spec.background)
    if fmt == "voc":
        return read_voc(
            spec.path, spec.split, spec.labels, spec.rename, spec.skip_unknown, spec.name,
            classes=spec.classes, background=spec.background,
        )
    if fmt == "folder":
        root, labels = spec.path, spec.labels
        if root.is_file():
            root, labels = root.parent, labels or root
        return read_folder(root, spec.images, labels, spec.classes, spec.rename, spec.skip_unknown, spec.name)
    if fmt == "masks":
        return read_masks(
            spec.path, spec.images, spec.labels, spec.classes, spec.rename, spec.skip_unknown,
            ignore_index=spec.ignore_index, background=spec.background, name=spec.name,
        )
    raise DatasetError(f"unknown dataset format {fmt!r}; use coco, voc, folder or masks")


_FORMAT_OPTIONS = {"split": ("coco", "voc"), "classes": ("voc", "folder", "masks"), "ignore_index": ("masks",), "background": ("masks", "voc", "coco")}
"""Spec options that only some formats read: set on another format they are refused, never ignored."""


def detect_format(path: str | Path) -> Format:
    """``coco``, ``voc``, ``masks`` or ``folder`` from what is at ``path``."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".json" and _looks_like_coco(path):
            return "coco"
        if path.suffix.lower() in (".json", ".csv"):
            return "folder"
        raise DatasetError(f"{path}: expected a folder, a COCO instances json or a labels file")
    if not path.is_dir():
        raise DatasetError(f"dataset path not found: {path}")
    if any(path.glob("annotations/instances_*.json")):
        return "coco"
    if is_voc(path):
        return "voc"
    if is_masks(path):
        return "masks"
    return "folder"


def _looks_like_coco(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    return b'"images"' in head or b'"annotations"' in head or b'"categories"' in head


def _normalise(spec: DatasetSpec) -> DatasetSpec:
    classes = spec.classes
    if classes is not None and not isinstance(classes, (str, Path)):
        classes = tuple(str(c) for c in classes)
    elif classes is not None:
        classes = Path(classes)
    return replace(
        spec,
        path=Path(spec.path),
        images=Path(spec.images) if spec.images is not None else None,
        labels=Path(spec.labels) if spec.labels is not None else None,
        classes=classes,
        rename=dict(spec.rename or {}),
    )

