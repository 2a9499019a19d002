"""Rasterise labelled masks into one label map, ModuSeg style.

Per-label mask NMS drops a mask when an already kept, higher-scoring mask of the same label overlaps it
with IoU above the threshold (or when it is below ``min_area``). The survivors are painted in
descending score; the first painter of a pixel wins. Masks labelled background (or unassigned, label
< 0) paint nothing and block nothing, so pixels nobody paints stay background.
"""

from __future__ import annotations

import numpy as np


def label_dtype(num_classes: int) -> np.dtype:
    """Smallest dtype for labels ``0..num_classes-1``: uint8 while 255 stays free for "ignore", then uint16, int32."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if num_classes <= 255:
        return np.dtype(np.uint8)
    if num_classes <= 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def _validate(masks: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, ...]:
    masks = np.asarray(masks)
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
    n = masks.shape[0]
    if labels.shape != (n,) or scores.shape != (n,):
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must both be ({n},)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    return masks.astype(bool, copy=False), labels.astype(np.int64), scores


def _boxes(masks: np.ndarray) -> np.ndarray:
    """``[N, 4]`` half-open boxes ``(y0, y1, x0, x1)``; empty masks get an empty box."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    h, w = masks.shape[1:]
    y0 = rows.argmax(axis=1)
    y1 = h - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = w - cols[:, ::-1].argmax(axis=1)
    empty = ~rows.any(axis=1)
    boxes = np.stack([y0, y1, x0, x1], axis=1)
    boxes[empty] = 0
    return boxes


def _intersection(masks: np.ndarray, boxes: np.ndarray, i: int, j: int) -> int:
    y0, x0 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 2], boxes[j, 2])
    y1, x1 = min(boxes[i, 1], boxes[j, 1]), min(boxes[i, 3], boxes[j, 3])
    if y0 >= y1 or x0 >= x1:
        return 0
    return int(np.count_nonzero(masks[i, y0:y1, x0:x1] & masks[j, y0:y1, x0:x1]))


def mask_nms(
    masks: np.ndarray, labels: np.ndarray, scores: np.ndarray, iou_threshold: float | None = 0.4, min_area: int = 0
) -> np.ndarray:
    """Boolean keep-mask over ``N`` masks: per-label greedy NMS in descending score.

    A mask is dropped if it has fewer than ``min_area`` pixels, a negative label, or mask IoU
    ``> iou_threshold`` with an already kept mask of the same label (no NMS when the threshold is None).
    """
    masks, labels, scores = _validate(masks, labels, scores)
    areas = masks.sum(axis=(1, 2))
    boxes = _boxes(masks)
    keep = np.zeros(masks.shape[0], dtype=bool)
    kept_by_label: dict[int, list[int]] = {}
    for i in np.argsort(-scores, kind="stable"):
        if labels[i] < 0 or areas[i] < min_area:
            continue
        kept = kept_by_label.setdefault(int(labels[i]), [])
        if iou_threshold is not None:
            overlaps = False
            for j in kept:
                inter = _intersection(masks, boxes, i, j)
                union = areas[i] + areas[j] - inter
                if union > 0 and inter / union > iou_threshold:
                    overlaps = True
                    break
            if overlaps:
                continue
        kept.append(int(i))
        keep[i] = True
    return keep


UNPAINTED = -1
"""Owner of a pixel no proposal painted (see :func:`paint_owner`)."""


def paint_owner(
    masks: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    background: int = 0,
    nms_iou: float | None = 0.4,
    min_area: int = 0,
) -> np.ndarray:
    """``int32[H, W]``: the index of the mask that paints each pixel, :data:`UNPAINTED` where none does.

    ``mask_nms(nms_iou, min_area)``, then paint in descending score (ties in index order), first painter
    wins; background- and negative-labelled masks paint nothing. Which mask painted a pixel is what a
    per-pixel score (an export's ``--min-score``) needs; :func:`paint_by_score` is its labels.
    """
    masks, labels, scores = _validate(masks, labels, scores)
    keep = mask_nms(masks, labels, scores, nms_iou, min_area)
    owner = np.full(masks.shape[1:], UNPAINTED, dtype=np.int32)
    for i in np.argsort(-scores, kind="stable"):
        if keep[i] and labels[i] != background:
            owner[masks[i] & (owner == UNPAINTED)] = i
    return owner


def owner_labels(owner: np.ndarray, labels: np.ndarray, num_classes: int, background: int = 0) -> np.ndarray:
    """The label map of a painting: each pixel's owner's label, ``background`` where unpainted, in
    ``label_dtype(num_classes)``."""
    lut = np.append(np.asarray(labels, np.int64), background)  # index -1 reads the appended background
    return lut[np.asarray(owner)].astype(label_dtype(num_classes))


def paint_by_score(
    masks: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    background: int = 0,
    nms_iou: float | None = 0.4,
    min_area: int = 0,
    num_classes: int | None = None,
) -> np.ndarray:
    """``[H, W]`` label map from ``[N, H, W]`` masks with per-mask labels and scores.

    ``mask_nms(nms_iou, min_area)``, then paint in descending score, first painter wins; background- and
    negative-labelled masks paint nothing; unpainted pixels are ``background`` (see :func:`paint_owner`). The
    dtype is ``label_dtype(num_classes)`` (uint8 for up to 255 classes); ``num_classes`` defaults to the
    largest label or ``background`` plus one, so pass it for a dtype that does not depend on the image.
    """
    masks, labels, scores = _validate(masks, labels, scores)
    top = int(max(labels.max(initial=0), background))
    num_classes = top + 1 if num_classes is None else int(num_classes)
    if background < 0 or top >= num_classes:
        raise ValueError(
            f"labels and background must lie in [0, {num_classes}), got max {top}, background {background}"
        )
    owner = paint_owner(masks, labels, scores, background, nms_iou, min_area)
    return owner_labels(owner, labels, num_classes, background)
