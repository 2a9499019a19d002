"""Small pictures of a label version for reports: which images to show, each photo shrunk with its label map
laid over it, the classes it shows, and the picture as a JPEG ``data:`` URI to embed in markdown.

Pure numpy/PIL; reading the images and label maps from a store is the caller's.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from maskbank.tasks import render

SHOWN_IMAGES = 4
"""Images a run report shows."""
SIDE = 200
"""Longer side, in pixels, of a report's thumbnails."""
JPEG_QUALITY = 85
BACKGROUND = 0
"""Label of background and of pixels no proposal painted: the photo shows through."""


@dataclass(frozen=True)
class Thumbnail:
    """One image of a report: its dataset id, the classes its label map shows, and the picture (photo with
    the label overlay) as a ``data:image/jpeg;base64,...`` URI."""

    image_id: str
    classes: tuple[str, ...]
    data_uri: str


def choose_images(images: Iterable[tuple[str, str]], labelled: Iterable[str],
                  n: int = SHOWN_IMAGES) -> list[tuple[str, str]]:
    """The first ``n`` of ``(image id, image key)`` pairs whose key is in ``labelled``, by image id (then key);
    an image key listed under several ids (the same file in two datasets) counts once, under its first id."""
    keys = set(labelled)
    chosen: list[tuple[str, str]] = []
    seen: set[str] = set()
    for image_id, key in sorted(set(images)):
        if len(chosen) == n:
            break
        if key in keys and key not in seen:
            seen.add(key)
            chosen.append((image_id, key))
    return chosen


def classes_shown(label_map: np.ndarray, class_names: Sequence[str], background: int = BACKGROUND) -> tuple[str, ...]:
    """Names of the classes a label map holds, by class index, background left out; an index past
    ``class_names`` is named ``class <index>``."""
    present = np.unique(np.asarray(label_map))
    return tuple(class_names[k] if k < len(class_names) else f"class {k}"
                 for k in (int(v) for v in present) if k != background)


def labels_picture(photo: np.ndarray, label_map: np.ndarray, side: int = SIDE) -> np.ndarray:
    """``photo`` shrunk to a longer side of at most ``side`` with its label map laid over it
    (:func:`render.overlay_labels`; background shows the photo). The label map must be in the photo's
    frame and at its size (the size it was made at)."""
    labels = np.asarray(label_map)
    if labels.shape != photo.shape[:2]:
        raise ValueError(f"label map is {labels.shape[0]}x{labels.shape[1]} but the photo is "
                         f"{photo.shape[0]}x{photo.shape[1]}: the file changed since it was labelled")
    return render.overlay_labels(render.thumbnail(photo, side), labels, unlabelled=BACKGROUND)


def jpeg_data_uri(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> str:
    """An RGB ``uint8[H, W, 3]`` picture as a ``data:image/jpeg;base64,...`` URI."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8), "RGB").save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def labels_thumbnail(image_id: str, photo: np.ndarray, label_map: np.ndarray, class_names: Sequence[str],
                     side: int = SIDE) -> Thumbnail:
    """The :class:`Thumbnail` of one labelled image."""
    return Thumbnail(image_id, classes_shown(label_map, class_names),
                     jpeg_data_uri(labels_picture(photo, label_map, side)))
