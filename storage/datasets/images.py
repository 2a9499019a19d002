"""Image decoding: any file PIL reads -> ``uint8[H, W, 3]`` RGB, or a clear :class:`ImageError`.

The pipeline works on images of at most :data:`MAX_WORKING_PIXELS` pixels: larger ones are decoded at a
reduced size (JPEG draft mode where possible) and downscaled, which bounds the memory of the full-size
masks every stage handles. Files over PIL's decompression-bomb limit (about 179 MP) are refused.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps

MAX_WORKING_PIXELS = 4_000_000
"""Largest image, in pixels, the pipeline processes at full size (e.g. 2309 x 1732)."""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


class ImageError(Exception):
    """An image file is missing, unreadable, corrupt or truncated."""


def working_size(image_hw: tuple[int, int], max_pixels: int | None = MAX_WORKING_PIXELS) -> tuple[int, int]:
    """``(height, width)`` an image of ``image_hw`` is processed at: itself, or scaled to at most
    ``max_pixels`` pixels with its aspect ratio kept."""
    h, w = int(image_hw[0]), int(image_hw[1])
    if max_pixels is None or h * w <= max_pixels:
        return h, w
    s = math.sqrt(max_pixels / (h * w))
    return max(1, math.floor(h * s)), max(1, math.floor(w * s))


def load_rgb(
    path: str | Path, exif_transpose: bool = True, max_pixels: int | None = MAX_WORKING_PIXELS
) -> np.ndarray:
    """Decode ``path`` into ``uint8[H, W, 3]`` RGB at its :func:`working_size`.

    With ``exif_transpose`` the EXIF orientation tag is applied. Grey, palette, alpha and CMYK modes
    become RGB (alpha is dropped); 16-bit images are scaled to 8 bits (``v * 255 / 65535``, rounded).
    Images over ``max_pixels`` are downscaled (area interpolation); ``max_pixels=None`` decodes the full
    size. A truncated or corrupt file raises :class:`ImageError`, never a partial image.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            target = working_size((im.height, im.width), max_pixels)
            if target != (im.height, im.width):
                im.draft(None, (target[1], target[0]))  # JPEG: decode at the smallest scale >= target
            im.load()
            if exif_transpose:
                swapped = im.getexif().get(ExifTags.Base.Orientation) in _TRANSPOSING_ORIENTATIONS
                im = ImageOps.exif_transpose(im)
                target = target[::-1] if swapped else target
            rgb = _to_rgb(im)
        if rgb.shape[:2] != target:
            rgb = cv2.resize(rgb, (target[1], target[0]), interpolation=cv2.INTER_AREA)
        return rgb
    except FileNotFoundError as e:
        raise ImageError(f"image file not found: {path}") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot decode image {path}: {e}") from e


def image_size(path: str | Path, exif_transpose: bool = True) -> tuple[int, int]:
    """``(height, width)`` from the file header (no decoding), as :func:`load_rgb` would return it."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            if exif_transpose and im.getexif().get(ExifTags.Base.Orientation) in _TRANSPOSING_ORIENTATIONS:
                w, h = h, w
            return h, w
    except FileNotFoundError as e:
        raise ImageError(f"image file not found: {path}") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image header {path}: {e}") from e


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in _SIXTEEN_BIT_MODES:
        v = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        grey = ((v * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
