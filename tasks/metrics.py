"""Dataset-level confusion matrix and IoU, with an ignore label and optional class remapping.

Rows are ground truth, columns prediction. Pixels whose (remapped) ground truth is ``ignore_index``
are not counted; every counted pixel must have a prediction in ``[0, K)``.

``iou_per_class`` is NaN for a class absent from both prediction and ground truth. ``miou`` skips
those classes by default; ``absent_as_zero=True`` counts them as 0, which is torchmetrics'
``MulticlassJaccardIndex`` convention (ModuSeg's metric). On full validation sets both agree.

To evaluate over a subset of classes (e.g. the 21 PASCAL VOC classes inside COCO's 81), pass lookups
from source to target labels (``maskbank.tasks.classes.subset_lookup``, or use
``ConfusionMatrix.for_subset``): ``remap`` maps the ground truth (other classes to ``ignore_index``)
and ``pred_remap`` the prediction (other classes to background, so predicting one of them where the
truth is a subset class is an error); ``pred_remap`` defaults to ``remap``.

:func:`summarise` gives a matrix's mIoU and per-class IoU as plain values, :func:`covers_voc` tells whether
a class list holds the 21 VOC classes, and :func:`fit_to_truth` brings a label map to its truth's size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from maskbank.tasks.classes import COCO_TO_VOC, VOC_CLASSES, subset_lookup


def _apply(values: np.ndarray, lookup: np.ndarray | None, ignore_index: int, what: str) -> np.ndarray:
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{what} must be an integer array, got {values.dtype}")
    values = values.astype(np.int64).ravel()
    if lookup is None:
        return values
    out = np.full(values.shape, ignore_index, dtype=np.int64)
    valid = values != ignore_index
    source = values[valid]
    if source.size and (source.min() < 0 or source.max() >= len(lookup)):
        raise ValueError(f"{what} has labels outside the lookup's [0, {len(lookup)})")
    out[valid] = lookup[source]
    return out


class ConfusionMatrix:
    """Accumulates an ``int64[K, K]`` confusion matrix image by image; matrices add with ``+``."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        remap: Sequence[int] | np.ndarray | None = None,
        pred_remap: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.remap = None if remap is None else np.asarray(remap, dtype=np.int64)
        self.pred_remap = self.remap if pred_remap is None else np.asarray(pred_remap, dtype=np.int64)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    @classmethod
    def for_subset(
        cls,
        source_names: Sequence[str],
        target_names: Sequence[str] = VOC_CLASSES,
        mapping: Mapping[str, str] = COCO_TO_VOC,
        ignore_index: int = 255,
    ) -> ConfusionMatrix:
        """Score ``source_names`` labels over ``target_names``: other classes are ignored in the ground
        truth and count as background (target label 0) in the prediction."""
        remap = subset_lookup(source_names, target_names, mapping, unmatched=ignore_index)
        pred_remap = subset_lookup(source_names, target_names, mapping, unmatched=0)
        return cls(len(target_names), ignore_index, remap, pred_remap)

    def update(self, pred: np.ndarray, truth: np.ndarray) -> ConfusionMatrix:
        """Count one image's ``[H, W]`` prediction against its ground truth; returns ``self``."""
        if np.shape(pred) != np.shape(truth):
            raise ValueError(f"pred shape {np.shape(pred)} != truth shape {np.shape(truth)}")
        k = self.num_classes
        truth = _apply(truth, self.remap, self.ignore_index, "truth")
        pred = _apply(pred, self.pred_remap, self.ignore_index, "pred")
        counted = truth != self.ignore_index
        truth, pred = truth[counted], pred[counted]
        if truth.size and (truth.min() < 0 or truth.max() >= k):
            raise ValueError(f"truth has labels outside [0, {k}) other than ignore {self.ignore_index}")
        if pred.size and (pred.min() < 0 or pred.max() >= k):
            raise ValueError(f"pred has labels outside [0, {k}) on counted pixels; map them with pred_remap")
        self.matrix += np.bincount(truth * k + pred, minlength=k * k).reshape(k, k)
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if not isinstance(other, ConfusionMatrix):
            return NotImplemented
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot add {self.num_classes}- and {other.num_classes}-class matrices")
        total = ConfusionMatrix(self.num_classes, self.ignore_index, self.remap, self.pred_remap)
        total.matrix = self.matrix + other.matrix
        return total

    def __radd__(self, other: object) -> ConfusionMatrix:
        # ``sum(matrices)`` starts from 0.
        if isinstance(other, int) and other == 0:
            return self + ConfusionMatrix(self.num_classes, self.ignore_index, self.remap, self.pred_remap)
        return NotImplemented

    def iou(self) -> np.ndarray:
        return iou_per_class(self.matrix)

    def miou(self, classes: Sequence[int] | None = None, absent_as_zero: bool = False) -> float:
        return miou(self.matrix, classes, absent_as_zero)


def confusion_matrix(
    pred: np.ndarray,
    truth: np.ndarray,
    num_classes: int,
    ignore_index: int = 255,
    remap: Sequence[int] | np.ndarray | None = None,
    pred_remap: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """``int64[K, K]`` confusion matrix (rows truth, columns prediction) of one prediction."""
    return ConfusionMatrix(num_classes, ignore_index, remap, pred_remap).update(pred, truth).matrix


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """``float64[K]`` IoU = TP / (TP + FP + FN); NaN for classes absent from prediction and truth."""
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    return np.divide(tp, union, out=np.full(tp.shape, np.nan), where=union > 0)


def miou(cm: np.ndarray, classes: Sequence[int] | None = None, absent_as_zero: bool = False) -> float:
    """Mean IoU over ``classes`` (all by default), skipping absent classes (or counting them as 0)."""
    iou = iou_per_class(cm)
    if classes is not None:
        iou = iou[np.asarray(classes, dtype=np.int64)]
    if absent_as_zero:
        iou = np.nan_to_num(iou, nan=0.0)
    present = iou[~np.isnan(iou)]
    return float(present.mean()) if present.size else float("nan")


def pixel_accuracy(cm: np.ndarray) -> float:
    """Share of counted pixels whose prediction is their truth (NaN when none is counted)."""
    total = int(np.asarray(cm).sum())
    return float(np.trace(cm) / total) if total else float("nan")


def mean_class_accuracy(cm: np.ndarray, classes: Sequence[int] | None = None) -> float:
    """Mean over ``classes`` (all by default) with truth pixels of the share of them predicted right (the
    per-class recall; NaN when no class has truth)."""
    cm = np.asarray(cm, dtype=np.int64)
    ids = np.arange(len(cm)) if classes is None else np.asarray(classes, dtype=np.int64)
    truth = cm.sum(axis=1)[ids]
    present = truth > 0
    return float((np.diag(cm)[ids][present] / truth[present]).mean()) if present.any() else float("nan")


def summarise(cm: ConfusionMatrix, names: list[str], background: bool = True) -> dict:
    """mIoU (absent classes skipped, and counted as 0), classes present, pixel accuracy, mean class accuracy
    and IoU per class name (``None`` when absent) of ``cm``. Without ``background`` (a class list without one,
    whose index 0 is only a placeholder) class 0 is left out of the means and the per-class IoU; a pixel left
    at 0 still counts against its true class."""
    classes = np.arange(0 if background else 1, cm.num_classes)
    iou = cm.iou()[classes]
    return {
        "miou": float(cm.miou(classes)),
        "miou_absent_as_zero": float(cm.miou(classes, absent_as_zero=True)),
        "classes_present": int(np.isfinite(iou).sum()),
        "pixel_accuracy": pixel_accuracy(cm.matrix),
        "mean_class_accuracy": mean_class_accuracy(cm.matrix, classes),
        "iou": {names[c]: (None if not np.isfinite(v) else float(v)) for c, v in zip(classes, iou)},
    }


def covers_voc(class_names: list[str]) -> bool:
    """Whether as many of ``class_names`` as there are PASCAL VOC classes match one (by name or COCO name)."""
    return int((subset_lookup(class_names, unmatched=255) != 255).sum()) == len(VOC_CLASSES)


def fit_to_truth(
    pred: np.ndarray, truth: np.ndarray, image_hw: tuple[int | None, int | None], working_hw: tuple[int, int]
) -> tuple[np.ndarray | None, str]:
    """The label map at the truth's size, or ``(None, reason)`` when the truth does not fit the image.

    ``image_hw`` is the image's size (``None`` where unknown) and ``working_hw`` the reduced size an image
    of the truth's size is processed at; a label map at ``working_hw`` is scaled up (nearest neighbour).
    """
    if None not in image_hw and truth.shape != image_hw:
        return None, f"truth is {truth.shape[0]}x{truth.shape[1]} but the image is {image_hw[0]}x{image_hw[1]}"
    if pred.shape == truth.shape:
        return pred, ""
    if pred.shape == working_hw:
        (h, w), (th, tw) = pred.shape, truth.shape
        return pred[(np.arange(th) * h // th)[:, None], np.arange(tw) * w // tw], ""
    return None, f"label map is {pred.shape[0]}x{pred.shape[1]} but the truth is {truth.shape[0]}x{truth.shape[1]}"
