"""Which classes a label map paints, and what in a label version looks wrong against its images' labels.

A label map paints a class when at least one of its pixels has that class's index; index 0 is background
(for class lists without one: pixels nobody painted) and is never counted as painted. Over the images that
have image labels, three things look wrong:

- **all background**: an image labelled with at least one class whose map paints no class at all;
- **labels missing**: an image whose map paints some class but not every one of its labels;
- **classes never painted**: a class that no image labelled with it paints.

:class:`CoverageTally` gathers these one map at a time and keeps a few numbers per class and at most
``max_named`` image names per check (the first by image id), so its memory does not grow with the
collection. Its :meth:`CoverageTally.summary` is plain JSON.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

MAX_NAMED = 100
"""Images named per check in a coverage summary (the counts are always complete)."""


def painted_classes(label_map: np.ndarray, num_classes: int) -> list[int]:
    """The classes (not background) with at least one pixel in ``label_map``, ascending; values outside
    ``1 .. num_classes - 1`` (an ignore value) do not count."""
    flat = np.asarray(label_map).ravel()
    if flat.dtype.kind == "u" and flat.itemsize <= 2:
        values = np.flatnonzero(np.bincount(flat))
    else:
        values = np.unique(flat)
    return [int(v) for v in values if 0 < v < num_classes]


def missing_labels(painted: Sequence[int], labels: Sequence[int]) -> list[int]:
    """The image's labels (not background) that its map does not paint, ascending."""
    have = set(painted)
    return sorted({int(c) for c in labels if c > 0 and c not in have})


def label_coverage(label_map: np.ndarray, labels: Sequence[int], num_classes: int) -> tuple[list[int], list[int]]:
    """``(painted, missing)``: the classes ``label_map`` paints and the image's ``labels`` it does not."""
    painted = painted_classes(label_map, num_classes)
    return painted, missing_labels(painted, labels)


class CoverageTally:
    """The looks-wrong counts of a label version, gathered a map at a time (see the module's docstring)."""

    def __init__(self, class_names: Sequence[str], max_named: int = MAX_NAMED) -> None:
        self.class_names = list(class_names)
        self.max_named = max_named
        self.images = 0
        self.all_background = 0
        self.labels_missing = 0
        self._all_background: list[str] = []
        self._labels_missing: list[tuple[str, list[int]]] = []
        self._labelled_with = np.zeros(len(self.class_names), np.int64)
        self._painted_in = np.zeros(len(self.class_names), np.int64)

    def add(self, image_id: str, painted: Sequence[int], labels: Sequence[int] | None) -> None:
        """Count one image: the classes its map paints and its image labels (None: unlabelled, not counted)."""
        if labels is None:
            return
        classes = sorted({int(c) for c in labels if 0 < c < len(self.class_names)})
        missing = missing_labels(painted, classes)
        self.images += 1
        self._labelled_with[classes] += 1
        self._painted_in[[c for c in classes if c not in missing]] += 1
        if not classes or not missing:
            return
        if not any(0 < c < len(self.class_names) for c in painted):
            self.all_background += 1
            self._keep(self._all_background, image_id)
        else:
            self.labels_missing += 1
            self._keep(self._labels_missing, (image_id, missing))

    def never_painted(self) -> list[int]:
        """Classes some counted image is labelled with and none of those images paints."""
        return [int(c) for c in np.flatnonzero((self._labelled_with > 0) & (self._painted_in == 0))]

    def summary(self) -> dict:
        """Plain JSON: ``{"images": n, "all_background": {"count", "images": [id]}, "labels_missing": {"count",
        "images": [{"image", "classes"}]}, "classes_never_painted": [{"class", "images"}]}``, images named
        in id order, at most ``max_named`` of each check."""
        names = self.class_names
        return {
            "images": self.images,
            "all_background": {"count": self.all_background, "images": list(self._all_background)},
            "labels_missing": {"count": self.labels_missing,
                               "images": [{"image": i, "classes": [names[c] for c in cs]}
                                          for i, cs in self._labels_missing]},
            "classes_never_painted": [{"class": names[c], "images": int(self._labelled_with[c])}
                                      for c in self.never_painted()],
        }

    def _keep(self, kept: list, item: str | tuple[str, list[int]]) -> None:
        """Insert ``item`` in image-id order, keeping the first ``max_named``."""
        bisect.insort(kept, item, key=lambda x: x if isinstance(x, str) else x[0])
        del kept[self.max_named:]
