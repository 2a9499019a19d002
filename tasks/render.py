"""Pictures of stored arrays: a fixed label palette, proposal outlines, feature PCA in RGB, heat maps, and
panels side by side with titles and a legend. Pure numpy/PIL; every picture is ``uint8[H, W, 3]`` RGB."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IGNORE_COLOR = (255, 255, 255)
BACKGROUND_COLOR = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
DIFFERENCE_COLOR = (255, 0, 0)
FONT_SIZE = 14
GAP = 8
OVERLAY_ALPHA = 0.55
"""Weight of the class colour where a label map is laid over its photo."""
THUMBNAIL_SIDE = 320
"""Longer side, in pixels, of the thumbnails of galleries and reports."""
TITLE_HEIGHT = FONT_SIZE + GAP


def label_palette(n: int) -> np.ndarray:
    """The PASCAL VOC colour map for classes ``0..n-1``, ``uint8[n, 3]`` (class 0, background, is black).

    Class ``k``'s colour interleaves the bits of ``k`` over the three channels, most significant first, so
    a class keeps its colour whatever the number of classes.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    k = np.arange(n, dtype=np.int64)
    rgb = np.zeros((n, 3), np.int64)
    for shift in range(8):
        for c in range(3):
            rgb[:, c] |= ((k >> (3 * shift + c)) & 1) << (7 - shift)
    return rgb.astype(np.uint8)


def colorize_labels(label_map: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """Label map ``[H, W]`` (class indices) -> colours of :func:`label_palette`; ``ignore_index`` pixels white."""
    labels = np.asarray(label_map)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise ValueError(f"label map must be an integer [H, W] array, got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("label map holds negative class indices")
    ignored = labels == ignore_index if ignore_index is not None else np.zeros(labels.shape, bool)
    shown = np.where(ignored, 0, labels).astype(np.int64)
    out = label_palette(int(shown.max()) + 1 if shown.size else 1)[shown]
    out[ignored] = IGNORE_COLOR
    return out


def overlay_labels(image: np.ndarray, label_map: np.ndarray, ignore_index: int | None = None,
                   alpha: float = OVERLAY_ALPHA, unlabelled: int | None = None) -> np.ndarray:
    """``image`` with its label map laid over it: each pixel blended ``alpha`` with its class colour
    (:func:`label_palette`); ``ignore_index`` pixels, and ``unlabelled`` ones (e.g. a background that is
    no class), keep the photo. ``label_map`` may be at another size than ``image`` (scaled, nearest)."""
    rgb = _rgb(image)
    labels = resize(np.asarray(label_map), rgb.shape[:2], nearest=True)
    keep = np.zeros(labels.shape, bool)
    for value in (ignore_index, unlabelled):
        if value is not None:
            keep |= labels == value
    colors = colorize_labels(np.where(keep, 0, labels).astype(np.int64)).astype(np.float32)
    out = rgb.astype(np.float32) * (1.0 - alpha) + colors * alpha
    out[keep] = rgb[keep]
    return out.round().astype(np.uint8)


def thumbnail_size(hw: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``(height, width)`` of ``hw`` scaled so its longer side is at most ``max_side`` (never enlarged)."""
    h, w = int(hw[0]), int(hw[1])
    scale = min(1.0, max_side / max(h, w, 1))
    return max(1, round(h * scale)), max(1, round(w * scale))


def thumbnail(image: np.ndarray, max_side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """An RGB ``image`` shrunk (area average) so its longer side is at most ``max_side``."""
    rgb = _rgb(image)
    hw = thumbnail_size(rgb.shape[:2], max_side)
    if hw == rgb.shape[:2]:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((hw[1], hw[0]), Image.Resampling.BOX))


def proposal_colors(n: int) -> np.ndarray:
    """``n`` bright, well-separated colours (hues stepped by the golden ratio), ``uint8[n, 3]``."""
    hues = (np.arange(n) * 0.6180339887498949) % 1.0
    return np.array([[round(255 * v) for v in colorsys.hsv_to_rgb(h, 1.0, 1.0)] for h in hues], np.uint8).reshape(n, 3)


def mask_edges(mask: np.ndarray) -> np.ndarray:
    """The mask's own boundary pixels: pixels of ``mask`` with a 4-neighbour outside it (beyond the image
    counts as outside), ``bool[H, W]``."""
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {m.shape}")
    p = np.pad(m, 1, constant_values=False)
    inside = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inside


def draw_outlines(image: np.ndarray, masks: np.ndarray, colors: np.ndarray | None = None) -> np.ndarray:
    """``image`` with each of ``masks`` (``bool[N, H, W]``) outlined on its boundary pixels in its colour
    (default :func:`proposal_colors`); later masks are drawn over earlier ones."""
    out = _rgb(image).copy()
    masks = np.asarray(masks, bool)
    if masks.ndim != 3 or masks.shape[1:] != out.shape[:2]:
        raise ValueError(f"masks must be [N, H, W] with [H, W] = {out.shape[:2]}, got {masks.shape}")
    colors = proposal_colors(len(masks)) if colors is None else np.asarray(colors, np.uint8)
    if colors.shape != (len(masks), 3):
        raise ValueError(f"need one RGB colour per mask, got shape {colors.shape} for {len(masks)} masks")
    for mask, color in zip(masks, colors):
        out[mask_edges(mask)] = color
    return out


def pca_rgb(features: np.ndarray) -> np.ndarray:
    """The first three principal components of ``[h, w, C]`` features as colours, ``float32[h, w, 3]`` in [0, 1].

    Each component is scaled so its 1st..99th percentile spans [0, 1] (clipped) and signed so that its
    largest loading is positive; missing components (fewer than 3 channels or tokens) are 0.
    """
    f = np.asarray(features, np.float64)
    if f.ndim != 3:
        raise ValueError(f"features must be [h, w, C], got shape {f.shape}")
    h, w, c = f.shape
    x = f.reshape(h * w, c)
    if not np.isfinite(x).all():
        raise ValueError("features must be finite")
    out = np.zeros((h * w, 3), np.float64)
    if x.size:
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        comps = vt[:3]
        comps *= np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])[:, None]
        proj = x @ comps.T
        lo, hi = np.percentile(proj, [1, 99], axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        out[:, : proj.shape[1]] = np.clip((proj - lo) / span, 0.0, 1.0)
    return out.reshape(h, w, 3).astype(np.float32)


def heatmap(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """``[H, W]`` values as the ``inferno`` colour map between ``vmin`` and ``vmax`` (default: the finite
    min and max); NaN is grey."""
    from matplotlib import colormaps

    v = np.asarray(values, np.float64)
    if v.ndim != 2:
        raise ValueError(f"values must be [H, W], got shape {v.shape}")
    finite = v[np.isfinite(v)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    scaled = np.clip((v - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(v)
    lut = (np.asarray(colormaps["inferno"](np.linspace(0, 1, 256)))[:, :3] * 255).round().astype(np.uint8)
    out = lut[np.nan_to_num(scaled * 255, nan=0.0).round().astype(np.int64)]
    out[~np.isfinite(v)] = (128, 128, 128)
    return out


def resize(image: np.ndarray, hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """An ``[h, w]`` or ``[h, w, K]`` array resampled to ``hw`` (bilinear, or nearest for labels)."""
    import cv2

    a = np.asarray(image)
    if a.shape[:2] == tuple(hw):
        return a
    kind = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    src = a if nearest else a.astype(np.float32)
    out = cv2.resize(src, (int(hw[1]), int(hw[0])), interpolation=kind)
    return out.reshape(int(hw[0]), int(hw[1]), *a.shape[2:])


def highlight(image: np.ndarray, mask: np.ndarray, color: Sequence[int] = DIFFERENCE_COLOR, dim: float = 0.35) -> np.ndarray:
    """A greyed, dimmed ``image`` with the pixels of ``mask`` painted ``color``."""
    rgb = _rgb(image)
    m = np.asarray(mask, bool)
    if m.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {m.shape} != image shape {rgb.shape[:2]}")
    grey = (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) * dim
    out = np.repeat(grey.round().astype(np.uint8)[:, :, None], 3, axis=2)
    out[m] = color
    return out


def legend(entries: Sequence[tuple[str, Sequence[int]]], font_size: int = FONT_SIZE) -> np.ndarray:
    """A white panel listing ``(name, colour)`` entries, one swatch and name per row."""
    font = _font(font_size)
    row = font_size + 6
    width = max([_text_width(name, font) for name, _ in entries] + [0]) + row + 12
    canvas = Image.new("RGB", (max(width, 1), max(row * len(entries) + 6, 1)), BACKGROUND_COLOR)
    draw = ImageDraw.Draw(canvas)
    for i, (name, color) in enumerate(entries):
        y = 3 + i * row
        draw.rectangle([3, y, 3 + font_size, y + font_size], fill=tuple(int(v) for v in color), outline=TEXT_COLOR)
        draw.text((font_size + 9, y), name, fill=TEXT_COLOR, font=font)
    return np.asarray(canvas)


def class_legend(label_maps: Sequence[np.ndarray], class_names: Sequence[str], ignore_index: int | None = None) -> np.ndarray:
    """:func:`legend` of the classes present in ``label_maps``, in the colours of :func:`colorize_labels`."""
    present = np.unique(np.concatenate([np.unique(np.asarray(m)) for m in label_maps])) if label_maps else []
    classes = [int(k) for k in present if k != ignore_index]
    palette = label_palette(max(classes) + 1 if classes else 1)
    entries = [(f"{k} {class_names[k]}" if k < len(class_names) else f"{k} (unknown class)", palette[k]) for k in classes]
    if ignore_index is not None and any(np.any(np.asarray(m) == ignore_index) for m in label_maps):
        entries.append(("ignore", IGNORE_COLOR))
    return legend(entries)


def side_by_side(panels: Sequence[np.ndarray], titles: Sequence[str] | None = None, gap: int = GAP) -> np.ndarray:
    """Panels left to right on white, each under its title.

    Layout: panel ``i``'s top-left corner is at ``x = gap + sum(width_j + gap for j < i)`` and
    ``y = gap + TITLE_HEIGHT`` (``y = gap`` without titles); the picture is ``gap`` wider and taller than
    the panels need.
    """
    if not panels:
        raise ValueError("no panels to lay out")
    titles = list(titles) if titles is not None else [""] * len(panels)
    if len(titles) != len(panels):
        raise ValueError(f"{len(titles)} titles for {len(panels)} panels")
    imgs = [_rgb(p) for p in panels]
    font = _font(FONT_SIZE)
    top = gap + (TITLE_HEIGHT if any(titles) else 0)
    width = sum(i.shape[1] for i in imgs) + gap * (len(imgs) + 1)
    height = top + max(i.shape[0] for i in imgs) + gap
    canvas = Image.new("RGB", (width, height), BACKGROUND_COLOR)
    draw = ImageDraw.Draw(canvas)
    x = gap
    for img, title in zip(imgs, titles):
        canvas.paste(Image.fromarray(img), (x, top))
        if title:
            draw.text((x, gap), title, fill=TEXT_COLOR, font=font)
        x += img.shape[1] + gap
    return np.asarray(canvas)


def to_uint8(rgb01: np.ndarray) -> np.ndarray:
    """``[0, 1]`` floats -> ``uint8`` (rounded, clipped)."""
    return (np.clip(np.asarray(rgb01, np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)


def _rgb(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3] RGB image, got {a.dtype} {a.shape}")
    return a


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _text_width(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)
