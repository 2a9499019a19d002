"""The COCO layout: ``annotations/instances_<split>.json`` with compressed-RLE masks, the images in
``<split>/``, so the folder reads back as a COCO dataset.

One annotation per image and class present (``iscrowd`` 0, no score), or, for ``instances``, one per
painted proposal: its visible pixels, its class and its ``score``. Ignored pixels are in no annotation
(COCO has no ignore label). When every image comes from a COCO dataset (its instances json beside its
images folder, as the COCO reader finds it), the export keeps that json's image ids, file names and image
fields, and its category ids and names where the classes are its categories; otherwise images get ids
1, 2, ... in name order and a class its index as category id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskbank.storage.export.files import write_json
from maskbank.storage.export.registry import FormatWriter, register
from maskbank.tasks import rle
from maskbank.tasks.paint import UNPAINTED

ANNOTATIONS_DIR = "annotations"


@dataclass(frozen=True)
class CocoSource:
    """The instances json a COCO dataset was read from: image entries by file name, categories, licences."""

    images: dict[str, dict]
    categories: list[dict]
    licenses: list


def find_source(root: Path, name: str) -> CocoSource | None:
    """The instances json beside a COCO images folder ``root`` of the dataset named ``name``, if any."""
    for base in (root.parent, root.parent.parent):
        for split in dict.fromkeys((name, root.name)):
            path = base / ANNOTATIONS_DIR / f"instances_{split}.json"
            if path.is_file():
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                    return CocoSource({im["file_name"]: im for im in data["images"]}, list(data["categories"]),
                                      list(data.get("licenses", [])))
                except (OSError, ValueError, KeyError, TypeError):
                    return None
    return None


@register
class CocoWriter(FormatWriter):
    name = "coco"

    @classmethod
    def owned(cls, out: Path, record: Mapping) -> list[Path]:
        return [out / ANNOTATIONS_DIR / f"instances_{record['split']}.json", out / record["split"]]

    def __init__(self, plan) -> None:
        super().__init__(plan)
        sources: dict[tuple[Path, str], CocoSource | None] = {}
        entries = []
        for image in plan.images:
            where = (image.dataset_root, image.dataset_name)
            if where not in sources:
                sources[where] = None if image.exif_transpose else find_source(*where)
            source = sources[where]
            entries.append(None if source is None else source.images.get(_relative(image.path, image.dataset_root)))
        kept = [s for s in sources.values() if s is not None]
        ids = [e["id"] for e in entries if e is not None]
        self.keep_images = bool(entries) and None not in entries and len(set(ids)) == len(ids)
        self.entries = {i.image_id: e for i, e in zip(plan.images, entries)} if self.keep_images else {}
        self.numbers = {i.image_id: n for n, i in enumerate(plan.images, start=1)}
        self.categories = self._categories(kept if self.keep_images else [])
        self.licenses = kept[0].licenses if self.keep_images else []
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def _categories(self, sources: list[CocoSource]) -> list[dict]:
        """The source's categories when the classes are exactly its categories; else index-numbered ones."""
        names = list(self.plan.class_names[self.plan.first_class:])
        cats = [sorted(s.categories, key=lambda c: c["id"]) for s in sources]
        if cats and all(c == cats[0] for c in cats) and [c["name"] for c in cats[0]] == names:
            return cats[0]
        return [{"id": k, "name": n, "supercategory": ""} for k, n in enumerate(names, start=1)]

    def image_file(self, image) -> Path:
        return self.out / self.plan.split / self._file_name(image)

    def _file_name(self, image) -> str:
        entry = self.entries.get(image.image_id)
        return entry["file_name"] if entry is not None else image.name + image.path.suffix

    def add(self, image, exported) -> None:
        labels = exported.labels
        h, w = labels.shape
        entry = self.entries.get(image.image_id)
        image_id = entry["id"] if entry is not None else self.numbers[image.image_id]
        self.images.append({**(entry or {}), "id": image_id, "file_name": self._file_name(image), "height": h,
                            "width": w})
        category = [c["id"] for c in self.categories]
        first = self.plan.first_class
        if exported.owner is None:
            present = [int(c) for c in np.unique(labels) if first <= c < len(self.plan.class_names)]
            for c in present:
                self.annotations.append(_annotation(labels == c, image_id, category[c - first]))
            return
        for p in np.unique(exported.owner):
            if p == UNPAINTED:
                continue
            c = int(exported.proposal_labels[p])  # a painting proposal is never background (paint_owner)
            ann = _annotation(exported.owner == p, image_id, category[c - first])
            self.annotations.append({**ann, "score": float(exported.proposal_scores[p])})

    def finish(self, images) -> None:
        p = self.plan
        data = {
            "info": {"description": f"maskbank export of {p.kind} version {p.version}", "version": p.version},
            "licenses": self.licenses,
            "images": self.images,
            "annotations": [{"id": n, **a} for n, a in enumerate(self.annotations, start=1)],
            "categories": self.categories,
        }
        write_json(self.out / ANNOTATIONS_DIR / f"instances_{p.split}.json", data)


def _annotation(mask: np.ndarray, image_id: int, category_id: int) -> dict:
    coded = rle.encode(mask[None])
    box = rle.bbox(coded)[0]
    return {"image_id": image_id, "category_id": category_id, "segmentation": coded[0],
            "area": int(rle.area(coded)[0]), "bbox": [float(v) for v in box], "iscrowd": 0}


def _relative(path: Path, root: Path) -> str | None:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return None
