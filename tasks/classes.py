"""Class lists and name-based lookups between them (e.g. the PASCAL VOC classes inside COCO's)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# COCO category name -> VOC class name, for the 20 VOC classes (and background).
COCO_TO_VOC: dict[str, str] = {
    "background": "background",
    "airplane": "aeroplane",
    "bicycle": "bicycle",
    "bird": "bird",
    "boat": "boat",
    "bottle": "bottle",
    "bus": "bus",
    "car": "car",
    "cat": "cat",
    "chair": "chair",
    "cow": "cow",
    "dining table": "diningtable",
    "dog": "dog",
    "horse": "horse",
    "motorcycle": "motorbike",
    "person": "person",
    "potted plant": "pottedplant",
    "sheep": "sheep",
    "couch": "sofa",
    "train": "train",
    "tv": "tvmonitor",
}


def _key(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def subset_lookup(
    source_names: Sequence[str],
    target_names: Sequence[str] = VOC_CLASSES,
    mapping: Mapping[str, str] = COCO_TO_VOC,
    unmatched: int = 255,
) -> np.ndarray:
    """``int64[len(source_names)]``: each source class's index in ``target_names``, else ``unmatched``.

    A source name is translated through ``mapping`` (names compare case-insensitively, ``_`` as a space)
    and otherwise matched as is. ``unmatched=255`` ignores the other classes in a ground truth;
    ``unmatched=0`` turns them into background in a prediction.
    """
    translate = {_key(src): _key(dst) for src, dst in mapping.items()}
    target = {_key(name): index for index, name in enumerate(target_names)}
    if len(target) != len(target_names):
        raise ValueError("target_names must be unique")
    lookup = np.full(len(source_names), unmatched, dtype=np.int64)
    for index, name in enumerate(source_names):
        key = _key(name)
        lookup[index] = target.get(translate.get(key, key), unmatched)
    return lookup


def multi_hot(labels: Sequence[Sequence[int]], num_classes: int, background: bool = False) -> np.ndarray:
    """``bool[I, K]`` from each image's class ids; with ``background``, column 0 is set for every image."""
    out = np.zeros((len(labels), num_classes), bool)
    for i, classes in enumerate(labels):
        out[i, list(classes)] = True
    if background:
        out[:, 0] = True
    return out
