"""What a gallery card says about one exported label map: the classes it shows and their share of the image,
how much it disagrees with the pixel truth, and the values its overlay is coloured by.

Exported labels are class values of the export (0 background where the classes have one) with ``ignore``
where they are withheld. Colours follow the store's class indices, as every other picture of the store does
(:func:`maskbank.tasks.render.label_palette`), so a class looks the same in the gallery and in
``maskbank show``; for classes without background the store's index of exported value ``v`` is ``v + 1``.
"""

from __future__ import annotations

import numpy as np

from maskbank.tasks.export import without_background


def class_shares(labels: np.ndarray, ignore: int) -> list[tuple[int, float]]:
    """``(value, share of the image's pixels)`` of each exported value but ``ignore``, largest first."""
    a = np.asarray(labels)
    values, counts = np.unique(a[a != ignore], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [(int(values[i]), float(counts[i]) / max(a.size, 1)) for i in order]


def truth_as_exported(truth: np.ndarray, truth_ignore: int, background: bool, ignore: int, num_classes: int) -> np.ndarray:
    """A dataset's pixel truth (store class indices, ``truth_ignore`` where ignored) in the export's values:
    unchanged for classes with background, shifted down past the placeholder without (see
    :func:`~maskbank.tasks.export.without_background`); ignored pixels are ``ignore``."""
    t = np.asarray(truth)
    if not background:
        return without_background(t, truth_ignore, num_classes)
    out = t.astype(np.int64)
    out[t == truth_ignore] = ignore
    return out


def disagreement(labels: np.ndarray, truth: np.ndarray, ignore: int) -> float | None:
    """Share of the pixels labelled in both ``labels`` and ``truth`` (same values, same ``ignore``) where
    they differ; None when no pixel is labelled in both."""
    a, t = np.asarray(labels), np.asarray(truth)
    if a.shape != t.shape:
        raise ValueError(f"labels {a.shape} and truth {t.shape} differ in size")
    both = (a != ignore) & (t != ignore)
    n = int(both.sum())
    return float((a[both] != t[both]).sum()) / n if n else None


def colour_values(labels: np.ndarray, ignore: int, background: bool) -> np.ndarray:
    """The store's class index of each exported pixel, for colouring; 0 where the photo shows through
    (background, ignored and, without background, unlabelled pixels)."""
    a = np.asarray(labels)
    values = a.astype(np.int64) + (0 if background else 1)
    values[a == ignore] = 0
    return values
