"""One exported label map, from a stored one: pixels set to ignore by score or coverage, the map brought to
the full size of its image, and turned into the pixel orientation its image file stores.

A stored label map is at the image's working size (reduced for images over ``MAX_WORKING_PIXELS``) and, for
datasets that apply EXIF orientation, in the orientation the photo is shown in. An exported map names an
image file, so it must line up with that file's stored pixels: it is scaled up (nearest neighbour, the
evaluation's rule) in the frame it was made in, then the EXIF orientation is undone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskbank.tasks.paint import UNPAINTED
from maskbank.tasks.paint import label_dtype

TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
"""EXIF orientations whose shown image has the stored image's height and width swapped."""


@dataclass(frozen=True)
class Painting:
    """How an image's label map was painted, at its working size: the proposal that painted each pixel
    (``owner``, ``-1`` where none), each proposal's score, and the pixels any proposal covers."""

    owner: np.ndarray
    scores: np.ndarray
    covered: np.ndarray


def ignore_index(num_classes: int) -> int:
    """Label of ignored pixels: 255, or 65535 when 255 is itself a class (the datasets' truth convention)."""
    return 255 if label_dtype(num_classes) == np.uint8 else 65535


def without_background(labels: np.ndarray, ignore: int, num_classes: int) -> np.ndarray:
    """A label map of a class list without background, whose index 0 is only a placeholder (pixels no class
    was painted on), in the indices of the real classes: class ``k`` -> ``k - 1``; the placeholder and
    ``ignore`` -> the ignore label of ``num_classes`` real classes (:func:`ignore_index`)."""
    a = np.asarray(labels)
    out = a.astype(np.int64) - 1
    out[(a == 0) | (a == ignore)] = ignore_index(num_classes)
    return out.astype(label_dtype(num_classes))


def mean_score(owner: np.ndarray, scores: np.ndarray) -> float | None:
    """Mean score of the painting proposals over the pixels they paint (``owner`` >= 0); None: none painted."""
    painted = np.asarray(owner)[np.asarray(owner) != UNPAINTED]
    return float(np.asarray(scores, np.float64)[painted].mean()) if painted.size else None


def shown_size(file_hw: tuple[int, int], orientation: int) -> tuple[int, int]:
    """``(height, width)`` of an image stored at ``file_hw`` once its EXIF orientation is applied."""
    h, w = int(file_hw[0]), int(file_hw[1])
    return (w, h) if orientation in TRANSPOSING_ORIENTATIONS else (h, w)


def resize_nearest(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``a`` ``[h, w]`` at ``hw`` by nearest neighbour: pixel ``(y, x)`` of the result is
    ``a[y * h // H, x * w // W]``, as the evaluation scales a label map up to its truth."""
    (h, w), (th, tw) = a.shape, (int(hw[0]), int(hw[1]))
    if (h, w) == (th, tw):
        return a
    return a[(np.arange(th) * h // th)[:, None], np.arange(tw) * w // tw]


def undo_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """``a`` in the shown orientation of an image whose EXIF orientation is ``orientation`` -> in the
    orientation its file stores (the inverse of PIL's ``ImageOps.exif_transpose``)."""
    undo = {
        1: lambda m: m,
        2: lambda m: m[:, ::-1],  # mirrored left-right
        3: lambda m: m[::-1, ::-1],  # rotated 180
        4: lambda m: m[::-1],  # mirrored top-bottom
        5: lambda m: m.T,  # transposed
        6: lambda m: np.rot90(m, 1),  # shown turned 90 clockwise: turn back
        7: lambda m: m.T[::-1, ::-1],  # transversed
        8: lambda m: np.rot90(m, -1),  # shown turned 90 counter-clockwise: turn back
    }
    return np.ascontiguousarray(undo.get(int(orientation), undo[1])(a))


def to_file_frame(a: np.ndarray, file_hw: tuple[int, int], orientation: int) -> np.ndarray:
    """A map made in an image's shown frame, at any size, brought to its file's stored size and orientation."""
    return undo_orientation(resize_nearest(a, shown_size(file_hw, orientation)), orientation)


def exported_labels(
    label_map: np.ndarray,
    num_classes: int,
    painting: Painting | None = None,
    min_score: float | None = None,
    unlabelled_ignore: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(labels, owner)`` at the label map's own size: ``labels`` is the stored map with ignore
    (:func:`ignore_index`) where the painting proposal scores below ``min_score`` and, with
    ``unlabelled_ignore``, where no proposal covers the pixel; ``owner`` is the painting's owner map with
    the pixels so ignored unpainted (None without a painting). ``min_score`` and ``unlabelled_ignore`` need
    ``painting``."""
    if painting is None:
        if min_score is not None or unlabelled_ignore:
            raise ValueError("min_score and unlabelled_ignore need the painting")
        return label_map, None
    ignore = ignore_index(num_classes)
    labels = label_map.astype(label_dtype(num_classes), copy=True)
    owner = painting.owner.copy()
    if min_score is not None:
        score = np.append(np.asarray(painting.scores, np.float64), np.inf)[owner]  # unpainted: never low
        low = score < min_score
        labels[low], owner[low] = ignore, UNPAINTED
    if unlabelled_ignore:
        labels[~painting.covered] = ignore
    return labels, owner
