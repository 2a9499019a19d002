"""COCO run-length encoding of binary masks (pycocotools), with ``counts`` as ``str`` so RLEs serialise as JSON."""

from __future__ import annotations

from collections.abc import Sequence

import warnings

import numpy as np
from pycocotools import mask as mask_utils


def encode(masks: np.ndarray) -> list[dict]:
    """Encode ``bool[N, H, W]`` masks as ``[{"size": [H, W], "counts": str}, ...]``."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8, copy=False))
    rles = mask_utils.encode(fortran)
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def _check(rles: Sequence[dict], image_hw: tuple[int, int]) -> None:
    for r in rles:
        if tuple(r["size"]) != tuple(image_hw):
            raise ValueError(f"RLE size {r['size']} != image size {list(image_hw)}")


def decode(rles: Sequence[dict], image_hw: tuple[int, int]) -> np.ndarray:
    """Decode RLEs of one ``image_hw`` image to ``bool[N, H, W]`` (``N`` may be 0)."""
    _check(rles, image_hw)
    if len(rles) == 0:
        return np.zeros((0, *image_hw), dtype=bool)
    with warnings.catch_warnings():
        # pycocotools' decoder predates numpy 2's ``__array__(copy=...)`` protocol
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = mask_utils.decode(list(rles))
    return decoded.transpose(2, 0, 1).astype(bool)


def area(rles: Sequence[dict]) -> np.ndarray:
    """Pixel count of each mask, ``int64[N]``."""
    if len(rles) == 0:
        return np.zeros(0, dtype=np.int64)
    return mask_utils.area(list(rles)).astype(np.int64)


def bbox(rles: Sequence[dict]) -> np.ndarray:
    """Tight pixel box of each mask as ``int32[N, 4]`` xywh (``w``, ``h`` count pixels; all 0 for an empty mask)."""
    if len(rles) == 0:
        return np.zeros((0, 4), dtype=np.int32)
    return np.rint(mask_utils.toBbox(list(rles))).astype(np.int32).reshape(-1, 4)
