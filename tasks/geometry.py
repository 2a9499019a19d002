"""Patch geometry: how a backbone's token grid maps back onto image pixels.

An image of ``image_hw`` is resized (aspect kept) to ``resized_hw``, then zero-padded at the bottom and
right to ``grid_hw * patch_size``. Token ``(i, j)`` covers resized pixels
``[i*P, (i+1)*P) x [j*P, (j+1)*P)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class PatchGeometry:
    """Where a ``[Hp, Wp]`` token grid sits on an ``image_hw`` image."""

    image_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    patch_size: int
    grid_hw: tuple[int, int]

    @classmethod
    def for_image(cls, image_hw: tuple[int, int], long_side: int, patch_size: int) -> "PatchGeometry":
        """Resize so the long side is ``long_side`` (at least one patch per side), pad to whole patches."""
        h, w = int(image_hw[0]), int(image_hw[1])
        if h < 1 or w < 1:
            raise ValueError(f"image size must be positive, got {image_hw}")
        scale = long_side / max(h, w)
        rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
        gh, gw = -(-rh // patch_size), -(-rw // patch_size)
        return cls((h, w), (rh, rw), int(patch_size), (gh, gw))

    @property
    def padded_hw(self) -> tuple[int, int]:
        return self.grid_hw[0] * self.patch_size, self.grid_hw[1] * self.patch_size

    @property
    def scale(self) -> float:
        """Resized pixels per image pixel."""
        return self.resized_hw[0] / self.image_hw[0]

    def patch_weights(self, mask: np.ndarray) -> np.ndarray:
        """Fraction of each token's cell covered by ``mask`` (``image_hw`` bool or float), ``[Hp, Wp]`` float32.

        Area-resamples the mask to ``resized_hw``, zero-pads bottom/right and averages each
        ``patch_size`` block, which is ModuSeg's soft-masked aggregation weight.
        """
        if mask.shape[:2] != self.image_hw:
            raise ValueError(f"mask shape {mask.shape[:2]} != image shape {self.image_hw}")
        m = mask.astype(np.float32, copy=False)
        if self.resized_hw != self.image_hw:
            m = cv2.resize(m, (self.resized_hw[1], self.resized_hw[0]), interpolation=cv2.INTER_AREA)
        ph, pw = self.padded_hw
        padded = np.zeros((ph, pw), np.float32)
        padded[: m.shape[0], : m.shape[1]] = m
        p = self.patch_size
        return padded.reshape(self.grid_hw[0], p, self.grid_hw[1], p).mean(axis=(1, 3))

    def to_image(self, grid: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        """Upsample a ``[Hp, Wp]`` (or ``[Hp, Wp, K]``) grid map to ``image_hw``."""
        ph, pw = self.padded_hw
        up = cv2.resize(grid.astype(np.float32), (pw, ph), interpolation=interpolation)
        up = up[: self.resized_hw[0], : self.resized_hw[1]]
        return cv2.resize(up, (self.image_hw[1], self.image_hw[0]), interpolation=interpolation)
