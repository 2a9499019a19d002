"""What a labelled collection's image labels say before any work: images per class, classes too thin to
learn from, classes in every image (nothing to contrast them with), and class names so close to another
that they look like typos; and how long the per-image stages take.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

THIN_CLASS_IMAGES = 4
"""A class in fewer labelled images than this is flagged: seeding learns a class by contrasting the images
that have it with those that do not. On subsets of MSRC-21 (BENCHMARKS.md, "Labelled images per class") the
seeds of a class in 2-3 labelled images reach about half the IoU its proposals allow, in 4-8 about two
thirds, in 9 or more about three quarters."""
ENOUGH_CLASS_IMAGES = 9
"""Labelled images per class past which more improve a class's seeds little (the same measurement)."""
CLOSE_NAME_RATIO = 0.8
"""Similarity (``difflib`` ratio) above which two class names look like one name misspelt."""


def class_image_counts(labels: Sequence[Sequence[int] | None], num_classes: int) -> np.ndarray:
    """``int64[num_classes]``: the labelled images with each class (index 0, background, is 0)."""
    counts = np.zeros(num_classes, np.int64)
    for image_labels in labels:
        if image_labels:
            counts[np.unique(np.asarray(image_labels, np.int64))] += 1
    return counts


def thin_classes(counts: np.ndarray, min_images: int = THIN_CLASS_IMAGES) -> list[int]:
    """Classes (not background) in at least one but fewer than ``min_images`` labelled images."""
    c = np.asarray(counts)
    return [int(k) for k in np.flatnonzero((c > 0) & (c < min_images)) if k > 0]


def everywhere_classes(counts: np.ndarray, labelled_images: int) -> list[int]:
    """Classes (not background) in every one of ``labelled_images`` images with at least one label (``counts``:
    images with each class), in a collection of more than one: no image shows what they are not."""
    c = np.asarray(counts)
    return [int(k) for k in np.flatnonzero(c == labelled_images) if k > 0] if labelled_images > 1 else []


def label_evidence(image_labels: np.ndarray, names: Sequence[str]) -> dict:
    """What the image labels of a labelled collection (``[I, K]`` multi-hot, column 0 background) give seeding
    to go on, as plain data: ``thin``, the classes in fewer than :data:`THIN_CLASS_IMAGES` images with their
    counts; ``everywhere``, the classes in every image with a label; and the thresholds."""
    labels = np.asarray(image_labels, bool)
    labelled = labels[labels[:, 1:].any(1)] if labels.size else labels
    counts = labelled.sum(0) if len(labelled) else np.zeros(len(names), np.int64)
    return {"labelled_images": int(len(labelled)),
            "thin": [{"class": names[k], "images": int(counts[k])} for k in thin_classes(counts)],
            "everywhere": [names[k] for k in everywhere_classes(counts, len(labelled))],
            "thin_below": THIN_CLASS_IMAGES, "enough": ENOUGH_CLASS_IMAGES}


@dataclass(frozen=True)
class CloseName:
    """A class name that looks like a misspelling of another, more used one."""

    rare: int
    common: int


def close_names(names: Sequence[str], counts: np.ndarray, ratio: float = CLOSE_NAME_RATIO) -> list[CloseName]:
    """Pairs of used classes whose names are at least ``ratio`` alike (case and separators ignored), the less
    used one first: likely one class written two ways."""
    def norm(name: str) -> str:
        return "".join(ch for ch in name.lower() if ch.isalnum())

    used = [k for k in range(1, len(names)) if counts[k] > 0]
    out = []
    for i, a in enumerate(used):
        for b in used[i + 1:]:
            if difflib.SequenceMatcher(None, norm(names[a]), norm(names[b])).ratio() >= ratio:
                rare, common = (a, b) if (counts[a], b) < (counts[b], a) else (b, a)
                out.append(CloseName(rare, common))
    return out


def work_seconds(images: int, seconds_per_image: float, cores: int, measured_cores: int) -> float:
    """Seconds for ``images`` at ``seconds_per_image`` measured on ``measured_cores`` cores, on ``cores``
    (assumes the time falls in proportion to the cores)."""
    return images * seconds_per_image * measured_cores / max(cores, 1)
