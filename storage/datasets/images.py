"""Image decoding: any file PIL reads -> ``uint8[H, W, 3]`` RGB, or a clear :class:`ImageError`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


class ImageError(Exception):
    """An image file is missing, unreadable, corrupt or truncated."""


def load_rgb(path: str | Path, exif_transpose: bool = True) -> np.ndarray:
    """Decode ``path`` fully into ``uint8[H, W, 3]`` RGB.

    With ``exif_transpose`` the EXIF orientation tag is applied. Grey, palette, alpha and CMYK modes
    become RGB (alpha is dropped); 16-bit images are scaled to 8 bits (``v * 255 / 65535``, rounded).
    A truncated or corrupt file raises :class:`ImageError`, never a partial image.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if exif_transpose:
                im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
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
