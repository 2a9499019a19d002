"""COCO instances json -> :class:`Dataset`.

Classes are the categories in ascending category id. An image's labels are the categories of all its
annotations (crowd included); its truth rasterises the instances with pycocotools, larger instances first
so smaller ones are drawn over them, on top of crowd regions, which are ignore. Image ids are file names
without extension. Annotations refer to stored pixels, so images are read without EXIF orientation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from pycocotools import mask as mask_utils

from maskbank.storage.datasets.classes import ClassMap, DatasetError
from maskbank.storage.datasets.hashing import FileHasher
from maskbank.storage.datasets.labels_file import empty_label_notes, safe_relative
from maskbank.storage.datasets.manifest import Dataset, ImageRecord
from maskbank.tasks import rle


def find_coco(path: str | Path, split: str | None = None, images: str | Path | None = None) -> tuple[Path, Path]:
    """``(annotation json, images folder)`` from a json path or a root with ``annotations/instances_<split>.json``.

    The images folder defaults to ``<root>/<split>`` (or ``<root>/images/<split>``) beside ``annotations/``.
    """
    path = Path(path)
    if path.is_file():
        ann = path
        if split is None:
            split = ann.stem.removeprefix("instances_")
        root = ann.parent.parent if ann.parent.name == "annotations" else ann.parent
    else:
        found = sorted(path.glob("annotations/instances_*.json"))
        splits = [p.stem.removeprefix("instances_") for p in found]
        if split is None:
            if len(splits) != 1:
                raise DatasetError(f"{path}: choose a COCO split, found {splits or 'none'}")
            split = splits[0]
        ann = path / "annotations" / f"instances_{split}.json"
        if not ann.is_file():
            raise DatasetError(f"{path}: no annotations/instances_{split}.json (splits found: {splits})")
        root = path
    if images is None:
        candidates = [root / split, root / "images" / split]
        images = next((c for c in candidates if c.is_dir()), None)
        if images is None:
            raise DatasetError(f"no images folder for COCO split {split!r}: tried {[str(c) for c in candidates]}")
    return ann, Path(images)


def read_coco(
    annotations: str | Path,
    images: str | Path,
    rename: Mapping[str, str] | None = None,
    name: str | None = None,
    background: bool | None = None,
) -> Dataset:
    """Read a COCO instances json whose ``file_name`` entries are relative to ``images``.

    ``background=False`` reads categories that cover every pixel between them (stuff and things, as a
    scene collection's): pixels in no annotation are then ignore, not background."""
    annotations, images = Path(annotations), Path(images)
    try:
        with open(annotations, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read COCO annotations {annotations}: {e}") from e
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{annotations}: not a COCO instances file (no {key!r} list)")

    cats = sorted(data["categories"], key=lambda c: c["id"])
    classes = ClassMap.build([c["name"] for c in cats], rename, has_background=background is not False)
    position = {c["id"]: i for i, c in enumerate(cats)}

    by_coco_id: dict[int, dict] = {}
    for im in data["images"]:
        if im["id"] in by_coco_id:
            raise DatasetError(f"{annotations}: duplicate image id {im['id']}")
        by_coco_id[im["id"]] = im
    anns_of: dict[int, list[dict]] = {i: [] for i in by_coco_id}
    bad_refs = set()
    for a in data["annotations"]:
        if a["image_id"] not in anns_of or a["category_id"] not in position:
            bad_refs.add((a["image_id"], a["category_id"]))
            continue
        anns_of[a["image_id"]].append(a)
    if bad_refs:
        raise DatasetError(f"{annotations}: annotations name unknown (image id, category id): {sorted(bad_refs)[:10]}")

    records, skipped, refused = [], [], []
    truth_anns: dict[str, list[dict]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    seen: dict[str, str] = {}
    for coco_id, im in by_coco_id.items():
        rel = safe_relative(im["file_name"])
        if rel is None:
            refused.append(im["file_name"])
            continue
        image_id = PurePosixPath(rel).with_suffix("").as_posix()
        if image_id in seen:
            raise DatasetError(f"{annotations}: {rel!r} and {seen[image_id]!r} give the same image id {image_id!r}")
        seen[image_id] = rel
        path = images / rel
        if not path.is_file():
            skipped.append((image_id, f"missing image file {path}"))
            continue
        anns = anns_of[coco_id]
        h, w = int(im["height"]), int(im["width"])
        labels = classes.labels(position[a["category_id"]] for a in anns)
        records.append(ImageRecord(image_id, Path(os.path.abspath(path)), labels, h, w, True))
        truth_anns[image_id] = [
            {"id": a["id"], "category": classes.source_to_index[position[a["category_id"]]],
             "iscrowd": int(a.get("iscrowd", 0)), "segmentation": a["segmentation"]}
            for a in sorted(anns, key=lambda a: a["id"])
        ]
        sizes[image_id] = (h, w)
    if refused:
        raise DatasetError(f"{annotations}: file names must be relative paths inside {images}: {refused[:10]}")
    records.sort(key=lambda r: r.image_id)
    return Dataset(
        name=name or annotations.stem.removeprefix("instances_"),
        root=images,
        classes=classes,
        records=records,
        truth_source=CocoTruth(classes, truth_anns, sizes),
        skipped=skipped,
        notes=empty_label_notes({r.image_id: r.labels for r in records}),
        exif_transpose=False,
    )


def write_coco_subset(
    root: str | Path, split: str, dest: str | Path, stems: Sequence[str] | None = None, first: int | None = None,
    copy_images: bool = False,
) -> Path:
    """Write a COCO ``split`` of ``root`` restricted to some images to ``dest/annotations/instances_<split>.json``.

    The images are those named by ``stems`` (file names without extension, in the split's order) or the
    ``first`` by file name. With ``copy_images`` they are copied to ``dest/<split>``; without, read the
    subset with ``images=<root>/<split>``. Returns the json's path.
    """
    if (stems is None) == (first is None):
        raise ValueError("give exactly one of stems and first")
    root, dest = Path(root), Path(dest)
    src = root / "annotations" / f"instances_{split}.json"
    coco = json.loads(src.read_text())
    if stems is not None:
        wanted = set(stems)
        images = [im for im in coco["images"] if PurePosixPath(im["file_name"]).stem in wanted]
        missing = wanted - {PurePosixPath(im["file_name"]).stem for im in images}
        if missing:
            raise DatasetError(f"{src} has no images {sorted(missing)}")
    else:
        images = sorted(coco["images"], key=lambda im: im["file_name"])[:first]
        if len(images) < first:
            raise DatasetError(f"{src} has {len(images)} images, fewer than {first}")
    ids = {im["id"] for im in images}
    coco["images"], coco["annotations"] = images, [a for a in coco["annotations"] if a["image_id"] in ids]
    if copy_images:
        (dest / split).mkdir(parents=True, exist_ok=True)
        for im in images:
            shutil.copy2(root / split / im["file_name"], dest / split / im["file_name"])
    out = dest / "annotations" / f"instances_{split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(coco))
    return out


class CocoTruth:
    """Rasterises an image's instances: crowd -> ignore, then instances by decreasing area."""

    def __init__(self, classes: ClassMap, anns: dict[str, list[dict]], sizes: dict[str, tuple[int, int]]) -> None:
        self.classes = classes
        self.anns = anns
        self.sizes = sizes

    def read(self, image_id: str) -> np.ndarray:
        h, w = self.sizes[image_id]
        unannotated = 0 if self.classes.has_background else self.classes.ignore_index
        out = np.full((h, w), unannotated, self.classes.truth_dtype)
        instances = []
        for a in self.anns[image_id]:
            encoded = _to_rle(a["segmentation"], h, w, image_id)
            if encoded is None:
                continue
            if a["iscrowd"]:
                out[rle.decode([encoded], (h, w))[0]] = self.classes.ignore_index
            else:
                instances.append((-int(mask_utils.area(encoded)), a["id"], a["category"], encoded))
        for _, _, category, encoded in sorted(instances, key=lambda t: (t[0], t[1])):
            out[rle.decode([encoded], (h, w))[0]] = category
        return out

    def digest(self, image_ids: Sequence[str], hasher: FileHasher) -> str:
        h = hashlib.sha256()
        if not self.classes.has_background:
            h.update(b"unannotated pixels are ignore\0")
        for i in image_ids:
            h.update(json.dumps([i, self.sizes[i], self.anns[i]], sort_keys=True, separators=(",", ":")).encode())
        return h.hexdigest()


def _to_rle(segm: object, h: int, w: int, image_id: str) -> dict | None:
    if isinstance(segm, list):
        polygons = [p for p in segm if len(p) >= 6]
        return mask_utils.merge(mask_utils.frPyObjects(polygons, h, w)) if polygons else None
    if not isinstance(segm, dict) or "counts" not in segm or "size" not in segm:
        raise DatasetError(f"image {image_id!r}: unreadable segmentation {str(segm)[:80]}")
    if list(segm["size"]) != [h, w]:
        raise DatasetError(f"image {image_id!r}: RLE size {segm['size']} != image size {[h, w]}")
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, h, w)
    counts = segm["counts"]
    return {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
