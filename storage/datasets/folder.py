"""A folder of images plus an optional labels file -> :class:`Dataset` (no pixel truth).

Images are found recursively under the images folder (``<root>/images`` if present, else ``<root>``),
skipping hidden entries; an image's id is its path relative to that folder. The labels file defaults to
``<root>/labels.csv`` or ``<root>/labels.json``. Images without a row are unlabelled (retrieval targets).
Classes are the given class list, else the sorted names used in the labels file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from maskbank.storage.datasets.classes import BACKGROUND, ClassMap, DatasetError
from maskbank.storage.datasets.images import IMAGE_EXTENSIONS, ImageError, image_size
from maskbank.storage.datasets.labels_file import empty_label_notes, read_labels_file, to_indices
from maskbank.storage.datasets.manifest import Dataset, ImageRecord

LABELS_FILE_NAMES = ("labels.csv", "labels.json")


def read_folder(
    root: str | Path,
    images: str | Path | None = None,
    labels: str | Path | None = None,
    classes: Sequence[str] | str | Path | None = None,
    rename: Mapping[str, str] | None = None,
    skip_unknown: bool = False,
    name: str | None = None,
) -> Dataset:
    """Read images under ``images`` with labels from ``labels``; ``classes`` is a list or a text file."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    images = Path(images) if images is not None else (root / "images" if (root / "images").is_dir() else root)
    if not images.is_dir():
        raise DatasetError(f"images folder not found: {images}")
    labels = Path(labels) if labels is not None else _default_labels_file(root)
    rows = read_labels_file(labels) if labels is not None else {}

    source = _class_list(classes) if classes is not None else sorted(
        {n for lab in rows.values() if lab for n in lab} - {BACKGROUND}
    )
    class_map = ClassMap.build(source, rename)
    indexed, notes = to_indices(rows, class_map, skip_unknown, labels) if rows else ({}, [])

    found = set(_scan(images))
    records, skipped = [], []
    for image_id in sorted(found | set(indexed)):
        path = images / image_id
        if not path.is_file():
            skipped.append((image_id, f"missing image file {path}"))
            continue
        try:
            h, w = image_size(path)
        except ImageError as e:
            skipped.append((image_id, str(e)))
            continue
        records.append(ImageRecord(image_id, Path(os.path.abspath(path)), indexed.get(image_id), h, w, False))
    return Dataset(
        name=name or root.name,
        root=images,
        classes=class_map,
        records=records,
        skipped=skipped,
        notes=notes + empty_label_notes({r.image_id: r.labels for r in records}),
        exif_transpose=True,
    )


def _default_labels_file(root: Path) -> Path | None:
    present = [root / n for n in LABELS_FILE_NAMES if (root / n).is_file()]
    if len(present) > 1:
        raise DatasetError(f"{root}: both {LABELS_FILE_NAMES[0]} and {LABELS_FILE_NAMES[1]} exist; name one")
    return present[0] if present else None


def _class_list(classes: Sequence[str] | str | Path) -> list[str]:
    if isinstance(classes, (str, Path)):
        path = Path(classes)
        if not path.is_file():
            raise DatasetError(f"class list file not found: {path}")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        names = [str(n).strip() for n in classes]
    return names[1:] if names and names[0] == BACKGROUND else names


def _scan(images: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(images):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(images)
        for f in filenames:
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                out.append((rel_dir / f).as_posix())
    return out
