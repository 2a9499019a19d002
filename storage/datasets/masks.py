"""A folder of images and class-index masks -> :class:`Dataset`.

``<root>/images/<id>.<ext>``, ``<root>/masks/<id>.png`` (one per image, same stem; grey or palette PNG read
as class indices, a palette's index and never its colour) and a class list ``<root>/classes.txt`` or
``classes.json`` (see :mod:`class_list`: index ``i`` names mask value ``i``; a class named ``background``
is the background, and a list without one records ``has_background=False``). Pixels at the ignore value
(default :data:`MASK_IGNORE_INDEX`) are ignored in the truth. Image-level labels come from a labels file
when one is given (rows name ``<id>`` or the image's file name), otherwise from the classes present in each
mask. Images without a mask are labelled only from that labels file; without one they are skipped. A mask
that is not a grey or palette PNG of its image's size is not used: the image keeps its labels-file labels
without truth (a note says so) or, without a labels file, is skipped. Masks refer to stored pixels, so
images are read without EXIF orientation.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from maskbank.storage.datasets.class_list import CLASS_LIST_FILES, MASK_IGNORE_INDEX, MaskClasses, mask_classes_of
from maskbank.storage.datasets.classes import DatasetError
from maskbank.storage.datasets.hashing import FileHasher
from maskbank.storage.datasets.images import IMAGE_EXTENSIONS, ImageError, image_size
from maskbank.storage.datasets.labels_file import empty_label_notes, read_labels_file, to_indices
from maskbank.storage.datasets.manifest import Dataset, ImageRecord

MASK_MODES = ("L", "P")


def is_masks(path: str | Path) -> bool:
    """Whether ``path`` has ``images/``, ``masks/`` and a class list."""
    path = Path(path)
    return (
        (path / "images").is_dir()
        and (path / "masks").is_dir()
        and any((path / n).is_file() for n in CLASS_LIST_FILES)
    )


def read_masks(
    root: str | Path,
    images: str | Path | None = None,
    labels: str | Path | None = None,
    classes: Sequence[str] | str | Path | None = None,
    rename: Mapping[str, str] | None = None,
    skip_unknown: bool = False,
    ignore_index: int | None = None,
    background: bool | None = None,
    name: str | None = None,
) -> Dataset:
    """Read every image and mask under ``root``.

    ``images`` overrides ``<root>/images``; ``classes`` overrides the class list (a list or a file);
    ``ignore_index`` is the mask value of ignored pixels (``None``: :data:`MASK_IGNORE_INDEX`);
    ``background`` fixes whether the class list has a background class (``None``: by name, see
    :meth:`MaskClasses.build`).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    images = Path(images) if images is not None else root / "images"
    if not images.is_dir():
        raise DatasetError(f"images folder not found: {images}")
    masks = root / "masks"
    if not masks.is_dir():
        raise DatasetError(f"masks folder not found: {masks}")
    ignore_value = MASK_IGNORE_INDEX if ignore_index is None else ignore_index
    mask_classes = mask_classes_of(root, classes, rename, background, ignore_value)
    if mask_classes is None:
        raise DatasetError(f"{root}: no class list (classes.txt or classes.json, one class name per mask value)")
    notes: list[str] = []
    file_labels: dict[str, tuple[int, ...] | None] | None = None
    if labels is not None:
        rows, notes = to_indices(read_labels_file(labels), mask_classes.classes, skip_unknown, labels)
        file_labels = _by_image_id(rows, labels)

    image_files = _scan(images)
    mask_files = {p.stem: p for p in masks.glob("*.png") if not p.name.startswith(".")}
    records, skipped = [], []
    truth_pngs: dict[str, Path] = {}
    for image_id in sorted(set(image_files) | set(mask_files) | set(file_labels or {})):
        path = image_files.get(image_id)
        png = mask_files.get(image_id)
        if path is None:
            what = f"mask {png}" if png is not None else "its labels-file row"
            skipped.append((image_id, f"no image file in {images} for {what}"))
            continue
        try:
            h, w = image_size(path, exif_transpose=False)
        except ImageError as e:
            skipped.append((image_id, str(e)))
            continue
        unusable = _unusable_mask(png, (h, w)) if png is not None else None
        if file_labels is not None:
            lab = file_labels.get(image_id)
            if unusable:
                notes.append(f"{image_id}: no truth: {unusable}")
        elif png is None:
            skipped.append((image_id, f"no mask {masks / (image_id + '.png')} and no labels file to label it"))
            continue
        elif unusable:
            skipped.append((image_id, unusable))
            continue
        else:
            try:  # its labels come from this mask: without it the image is unusable
                lab = mask_classes.labels(read_index_png(png), png)
            except DatasetError as e:
                skipped.append((image_id, str(e)))
                continue
        has_truth = png is not None and not unusable
        if has_truth:
            truth_pngs[image_id] = png
        records.append(ImageRecord(image_id, Path(os.path.abspath(path)), lab, h, w, has_truth))
    return Dataset(
        name=name or root.name,
        root=root,
        classes=mask_classes.classes,
        records=records,
        truth_source=MaskTruth(mask_classes, truth_pngs),
        skipped=skipped,
        notes=notes + empty_label_notes({r.image_id: r.labels for r in records}),
        exif_transpose=False,
    )


class MaskTruth:
    """Reads class-index mask PNGs and maps their values through the class list and renaming."""

    def __init__(self, mask_classes: MaskClasses, pngs: dict[str, Path]) -> None:
        self.mask_classes = mask_classes
        self.pngs = pngs

    def read(self, image_id: str) -> np.ndarray:
        png = self.pngs[image_id]
        return self.mask_classes.truth(read_index_png(png), png)

    def digest(self, image_ids: Sequence[str], hasher: FileHasher) -> str:
        entries = [[i, hasher.sha256(self.pngs[i])] for i in image_ids]
        key = [self.mask_classes.digest_key(), entries]
        return hashlib.sha256(json.dumps(key, separators=(",", ":")).encode()).hexdigest()


def read_index_png(png: Path) -> np.ndarray:
    """The class indices ``uint8[H, W]`` of a grey or palette PNG (a palette's indices, not its colours)."""
    try:
        with Image.open(png) as im:
            if im.mode not in MASK_MODES:
                raise DatasetError(f"{png}: a mask must be a grey or palette index PNG, got mode {im.mode}")
            return np.asarray(im)
    except OSError as e:
        raise DatasetError(f"cannot read mask {png}: {e}") from e


def _unusable_mask(png: Path, image_hw: tuple[int, int]) -> str | None:
    """Why the mask cannot be the image's truth, from its header; ``None`` when it can."""
    try:
        with Image.open(png) as im:
            mode, (w, h) = im.mode, im.size
    except OSError as e:
        return f"cannot read mask {png}: {e}"
    if mode not in MASK_MODES:
        return f"mask {png} is not a grey or palette index PNG (mode {mode})"
    if (h, w) != image_hw:
        return f"mask {png} is {w}x{h}, its image {image_hw[1]}x{image_hw[0]}"
    return None


def _by_image_id(rows: dict[str, tuple[int, ...] | None], labels: str | Path) -> dict[str, tuple[int, ...] | None]:
    """Labels-file rows keyed by image id: a row names ``<id>`` or ``<id>.<image extension>``."""
    out: dict[str, tuple[int, ...] | None] = {}
    for rel, lab in rows.items():
        p = PurePosixPath(rel)
        image_id = p.with_suffix("").as_posix() if p.suffix.lower() in IMAGE_EXTENSIONS else rel
        if image_id in out:
            raise DatasetError(f"{labels}: image {image_id!r} is listed twice")
        out[image_id] = lab
    return out


def _scan(images: Path) -> dict[str, Path]:
    """``{stem: path}`` of the image files directly in ``images``; two files of one stem raise."""
    found: dict[str, Path] = {}
    for p in sorted(images.iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file():
            continue
        if p.stem in found:
            raise DatasetError(f"{images}: {found[p.stem].name} and {p.name} share the id {p.stem!r}; keep one")
        found[p.stem] = p
    return found
