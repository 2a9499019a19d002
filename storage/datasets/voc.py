"""PASCAL VOC segmentation layout -> :class:`Dataset`.

``<root>/JPEGImages/<id>.jpg`` (or another image type), ``<root>/SegmentationClass/<id>.png`` (palette indices: 0 background,
1..20 classes, 255 ignore) and ``<root>/ImageSets/Segmentation/<split>.txt``. Image-level labels come from
a labels file when one is given (names are the 20 standard class names; rows name ``<id>`` or
``<id>.jpg``), otherwise from each truth PNG (its values minus 0 and 255).

A root with a class list beside ``JPEGImages/`` (``classes.txt`` or ``classes.json``, see :mod:`class_list`)
or a given ``classes`` list has those classes instead: truth PNG value ``i`` is class ``i`` of the list
(palette PNGs read as indices), 255 is ignore, and a list without a background class records
``has_background=False``. Without one the classes and palette are VOC's own.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from maskbank.storage.datasets.class_list import MaskClasses, mask_classes_of
from maskbank.storage.datasets.classes import ClassMap, DatasetError
from maskbank.storage.datasets.hashing import FileHasher
from maskbank.storage.datasets.images import IMAGE_EXTENSIONS, ImageError, image_size
from maskbank.storage.datasets.labels_file import empty_label_notes, read_labels_file, to_indices
from maskbank.storage.datasets.manifest import Dataset, ImageRecord
from maskbank.storage.datasets.masks import MaskTruth, read_index_png

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def is_voc(path: str | Path) -> bool:
    path = Path(path)
    return (path / "JPEGImages").is_dir() and (
        (path / "SegmentationClass").is_dir() or (path / "ImageSets" / "Segmentation").is_dir()
    )


def read_voc(
    root: str | Path,
    split: str | None = None,
    labels: str | Path | None = None,
    rename: Mapping[str, str] | None = None,
    skip_unknown: bool = False,
    name: str | None = None,
    classes: Sequence[str] | str | Path | None = None,
    background: bool | None = None,
) -> Dataset:
    """Read the images of ``split`` (or, without split files, every truth PNG and labels-file row).

    ``classes`` (a list or a file) overrides the root's class list; ``background`` fixes whether that list
    has a background class (``None``: by name).
    """
    root = Path(root)
    if not is_voc(root):
        raise DatasetError(
            f"{root}: not a VOC folder (needs JPEGImages/ and SegmentationClass/ or ImageSets/Segmentation/)"
        )
    mask_classes = mask_classes_of(root, classes, rename, background)
    if mask_classes is None and background is False:
        raise DatasetError(f"{root}: VOC's own classes have a background; background=False needs a class list")
    class_map = ClassMap.build(VOC_CLASSES, rename) if mask_classes is None else mask_classes.classes
    seg_dir = root / "SegmentationClass"
    notes: list[str] = []
    file_labels: dict[str, tuple[int, ...] | None] | None = None
    if labels is not None:
        rows, notes = to_indices(read_labels_file(labels), class_map, skip_unknown, labels)
        file_labels = {}
        for rel, lab in rows.items():
            base = PurePosixPath(rel).name
            image_id = base[:-4] if base.lower().endswith(".jpg") else base
            if image_id in file_labels:
                raise DatasetError(f"{labels}: image {image_id!r} is listed twice")
            file_labels[image_id] = lab
    ids = _split_ids(root, split, file_labels)

    records, skipped = [], []
    truth_pngs: dict[str, Path] = {}
    for image_id in ids:
        path = _image_file(root / "JPEGImages", image_id)
        png = seg_dir / f"{image_id}.png"
        if not path.is_file():
            skipped.append((image_id, f"missing image file {path}"))
            continue
        try:
            h, w = image_size(path, exif_transpose=False)
        except ImageError as e:
            skipped.append((image_id, str(e)))
            continue
        has_truth = png.is_file()
        if file_labels is not None:
            lab = file_labels.get(image_id)
        elif has_truth:
            try:  # its labels come from this truth: without it the image is unusable
                lab = _truth_labels(png, class_map, mask_classes)
            except DatasetError as e:
                skipped.append((image_id, str(e)))
                continue
        else:
            lab = None
        if has_truth:
            truth_pngs[image_id] = png
        records.append(ImageRecord(image_id, Path(os.path.abspath(path)), lab, h, w, has_truth))
    return Dataset(
        name=name or (f"voc-{split}" if split else root.name),
        root=root,
        classes=class_map,
        records=records,
        truth_source=VocTruth(class_map, truth_pngs) if mask_classes is None else MaskTruth(mask_classes, truth_pngs),
        skipped=skipped,
        notes=notes + empty_label_notes({r.image_id: r.labels for r in records}),
        exif_transpose=False,
    )


def _truth_labels(png: Path, classes: ClassMap, mask_classes: MaskClasses | None) -> tuple[int, ...]:
    if mask_classes is not None:
        return mask_classes.labels(read_index_png(png), png)
    values = np.unique(_read_index_png(png))
    return classes.labels(int(v) - 1 for v in values if 0 < v < 255)


def _split_ids(root: Path, split: str | None, file_labels: dict | None) -> list[str]:
    sets = root / "ImageSets" / "Segmentation"
    available = sorted(p.stem for p in sets.glob("*.txt")) if sets.is_dir() else []
    if split is None and len(available) == 1:
        split = available[0]
    if split is None and available:
        raise DatasetError(f"{root}: choose a VOC split, found {available}")
    if split is None:
        stems = {p.stem for p in (root / "SegmentationClass").glob("*.png")}
        return sorted(stems | set(file_labels or {}))
    listing = sets / f"{split}.txt"
    if not listing.is_file():
        raise DatasetError(f"{root}: no ImageSets/Segmentation/{split}.txt (splits found: {available})")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dupes:
        raise DatasetError(f"{listing}: duplicate image ids {dupes[:10]}")
    bad = [i for i in ids if "/" in i or "\\" in i or i in (".", "..")]
    if bad:
        raise DatasetError(f"{listing}: image ids must be plain names: {bad[:10]}")
    return ids


class VocTruth:
    """Reads SegmentationClass palette PNGs and maps their indices through the class renaming."""

    def __init__(self, classes: ClassMap, pngs: dict[str, Path]) -> None:
        self.classes = classes
        self.pngs = pngs
        lut = np.zeros(256, np.int64)
        lut[1 : len(VOC_CLASSES) + 1] = classes.source_to_index
        lut[255] = classes.ignore_index
        self._lut = lut.astype(classes.truth_dtype)

    def read(self, image_id: str) -> np.ndarray:
        return self._lut[_read_index_png(self.pngs[image_id])]

    def digest(self, image_ids: Sequence[str], hasher: FileHasher) -> str:
        entries = [[i, hasher.sha256(self.pngs[i])] for i in image_ids]
        return hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode()).hexdigest()


def _read_index_png(png: Path) -> np.ndarray:
    try:
        with Image.open(png) as im:
            if im.mode not in ("P", "L"):
                raise DatasetError(f"{png}: truth must be a palette or grey index PNG, got mode {im.mode}")
            raw = np.asarray(im)
    except OSError as e:
        raise DatasetError(f"cannot read truth {png}: {e}") from e
    bad = np.unique(raw[(raw > len(VOC_CLASSES)) & (raw != 255)])
    if bad.size:
        raise DatasetError(f"{png}: values {bad.tolist()} are neither classes 0..{len(VOC_CLASSES)} nor 255")
    return raw


_IMAGE_SUFFIXES = (".jpg", *sorted(IMAGE_EXTENSIONS - {".jpg"}))


def _image_file(folder: Path, image_id: str) -> Path:
    """``<folder>/<image_id>.jpg``, or the image of another type (any case of its extension) when there is
    no JPEG; the ``.jpg`` path when there is none at all (reported missing)."""
    for suffix in _IMAGE_SUFFIXES:
        for candidate in (folder / f"{image_id}{suffix}", folder / f"{image_id}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return folder / f"{image_id}.jpg"
