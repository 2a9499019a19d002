"""Semantic boundary purification: erode each class region of a label map before it becomes a prototype.

ModuSeg erodes every class region (background included) with a 3x3 all-ones kernel for 20 iterations
and keeps it if at least 300 pixels survive. A fixed 20-pixel band erases most small objects, so the
default here scales the band with the object's size (``scaled_iterations``) and, when even that
erases the region, falls back to the strongest lighter erosion that still leaves ``min_area`` pixels.
``PurifyParams.moduseg()`` gives the original fixed rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

import cv2
import numpy as np

Iterations = int | Literal["scaled"]

# ModuSeg keeps a purified region of at least 300 px on VOC/COCO images of about 500x375 px;
# as a fraction of the image area this carries over to any resolution.
MIN_AREA = 300
MIN_AREA_FRACTION = MIN_AREA / (500 * 375)


def _as_binary(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def erode_region(mask: np.ndarray, iterations: int, kernel: int = 3) -> np.ndarray:
    """Erode a binary ``[H, W]`` mask with a ``kernel`` x ``kernel`` all-ones element, ``iterations`` times.

    Same as ``cv2.erode`` with its default border: pixels outside the frame count as foreground, so a
    region touching the frame is not shrunk from that side.
    """
    mask = _as_binary(mask)
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be a positive odd size, got {kernel}")
    if iterations == 0 or kernel == 1:
        return mask.copy()
    element = np.ones((kernel, kernel), np.uint8)
    return cv2.erode(mask.astype(np.uint8), element, iterations=int(iterations)).astype(bool)


def scaled_iterations(mask: np.ndarray, fraction: float, max_iterations: int) -> int:
    """Erosion iterations proportional to the region's size.

    ``min(max_iterations, round(fraction * r))`` with ``r = sqrt(area / pi)`` the radius of the disc of
    the same area. With a 3x3 kernel one iteration removes a one-pixel band, so a disc keeps about
    ``(1 - fraction)**2`` of its area.
    """
    if fraction < 0:
        raise ValueError(f"fraction must be >= 0, got {fraction}")
    if max_iterations < 0:
        raise ValueError(f"max_iterations must be >= 0, got {max_iterations}")
    radius = math.sqrt(int(np.count_nonzero(_as_binary(mask))) / math.pi)
    return min(int(max_iterations), int(round(fraction * radius)))


def _purify_one(region: np.ndarray, iterations: int, kernel: int, min_area: int, fallback: bool) -> np.ndarray | None:
    min_area = max(min_area, 1)
    if np.count_nonzero(region) < min_area:
        return None
    if not fallback:
        eroded = erode_region(region, iterations, kernel)
        return eroded if np.count_nonzero(eroded) >= min_area else None
    # One iteration at a time: stop at the last erosion that still leaves ``min_area`` pixels.
    current = region
    for _ in range(iterations):
        eroded = erode_region(current, 1, kernel)
        if np.count_nonzero(eroded) < min_area:
            break
        current = eroded
    return current


def purify_regions(
    label_map: np.ndarray,
    classes: Iterable[int],
    *,
    iterations: Iterations = "scaled",
    fraction: float = 0.25,
    max_iterations: int = 20,
    min_area: int = MIN_AREA,
    kernel: int = 3,
    fallback: bool = True,
    background: int | None = 0,
) -> dict[int, np.ndarray]:
    """Eroded binary region per class of an ``[H, W]`` integer label map.

    Regions are visited in the order of ``classes``, then ``background`` (ModuSeg's order) unless it is
    ``None`` or already listed; all components of a class form one region. ``iterations`` is a fixed
    count (ModuSeg: 20) or ``"scaled"`` (``scaled_iterations(region, fraction, max_iterations)``).
    A region with fewer than ``min_area`` pixels (or none) before erosion is dropped. If the erosion
    leaves fewer than ``min_area`` pixels, the region is dropped when ``fallback`` is False (ModuSeg)
    and otherwise kept at the largest iteration count (possibly 0) that leaves at least ``min_area``.
    """
    label_map = np.asarray(label_map)
    if label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"label_map must be a 2-D integer array, got {label_map.dtype} {label_map.shape}")
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0, got {min_area}")
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be a positive odd size, got {kernel}")
    if iterations != "scaled" and (not isinstance(iterations, (int, np.integer)) or iterations < 0):
        raise ValueError(f"iterations must be 'scaled' or an int >= 0, got {iterations!r}")
    order = [int(c) for c in classes]
    if background is not None and int(background) not in order:
        order.append(int(background))
    regions: dict[int, np.ndarray] = {}
    for cls in order:
        region = label_map == cls
        n = scaled_iterations(region, fraction, max_iterations) if iterations == "scaled" else int(iterations)
        purified = _purify_one(region, n, kernel, min_area, fallback)
        if purified is not None:
            regions[cls] = purified
    return regions


@dataclass(frozen=True)
class PurifyParams:
    """Settings of ``purify_regions`` as one value, so a bank's purification can be recorded and replayed."""

    iterations: Iterations = "scaled"
    fraction: float = 0.25
    max_iterations: int = 20
    min_area: int = MIN_AREA
    kernel: int = 3
    fallback: bool = True

    @classmethod
    def moduseg(cls) -> PurifyParams:
        """ModuSeg's rule: 3x3 kernel, 20 iterations, drop regions with fewer than 300 surviving pixels."""
        return cls(iterations=20, min_area=300, kernel=3, fallback=False)

    def apply(self, label_map: np.ndarray, classes: Iterable[int], background: int | None = 0) -> dict[int, np.ndarray]:
        """``purify_regions`` with these settings."""
        return purify_regions(label_map, classes, background=background, **asdict(self))
