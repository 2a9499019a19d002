"""Which proposal gave each pixel its label: the painting of :func:`maskbank.tasks.paint.paint_by_score`,
kept as proposal indices instead of labels.

A stored label map says what each pixel is, not how sure its painter was. Exporting with a score threshold
needs the painter of every pixel; painting again with the same masks, labels, scores and NMS gives it,
pixel for pixel (``owner_labels(paint_owner(...)) == paint_by_score(...)``). Kept apart from
:mod:`maskbank.tasks.paint` so that the painting code, and with it every stored version's id, stays as it is.
"""

from __future__ import annotations

import numpy as np

from maskbank.tasks.paint import label_dtype, mask_nms

UNPAINTED = -1
"""Owner of a pixel no proposal painted."""


def paint_owner(
    masks: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    background: int = 0,
    nms_iou: float | None = 0.4,
    min_area: int = 0,
) -> np.ndarray:
    """``int32[H, W]``: the index of the proposal that painted each pixel, :data:`UNPAINTED` where none did.

    The order and rules of ``paint_by_score``: ``mask_nms(nms_iou, min_area)``, then descending score
    (ties in index order), first painter wins; background- and negative-labelled masks paint nothing.
    """
    keep = mask_nms(masks, labels, scores, nms_iou, min_area)  # also checks shapes and dtypes
    masks = np.asarray(masks).astype(bool, copy=False)
    labels = np.asarray(labels).astype(np.int64)
    owner = np.full(masks.shape[1:], UNPAINTED, np.int32)
    for i in np.argsort(-np.asarray(scores, np.float64), kind="stable"):
        if keep[i] and labels[i] != background:
            owner[masks[i] & (owner == UNPAINTED)] = i
    return owner


def owner_labels(owner: np.ndarray, labels: np.ndarray, num_classes: int, background: int = 0) -> np.ndarray:
    """The label map a painting stands for: each pixel's owner's label, ``background`` where unpainted, in
    ``label_dtype(num_classes)`` (the dtype ``paint_by_score`` gives)."""
    owner = np.asarray(owner)
    lut = np.append(np.asarray(labels, np.int64), background)  # index -1 reads the appended background
    return lut[owner].astype(label_dtype(num_classes))
