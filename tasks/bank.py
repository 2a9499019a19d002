"""Prototype bank: one unit vector per (image, class) region, filtered per class.

Per bank image, each purified class region (background included) is soft-pooled into a prototype
(``prototypes_for_image``). ``BankBuilder`` gathers them and drops, per foreground class, the prototypes
farthest from the class mean (``filter_outliers``; ModuSeg drops 25 % and keeps background whole).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from maskbank.tasks.geometry import PatchGeometry
from maskbank.tasks.pooling import pool_masks
from maskbank.tasks.purify import PurifyParams

MIN_NORM = 1e-6
UNIT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class PrototypeBank:
    """``M`` unit prototypes with their class label and the index of the bank image they came from.

    ``class_names[k]`` names label ``k``; label 0 is background by convention.
    """

    vectors: np.ndarray
    labels: np.ndarray
    image_index: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        vectors = np.asarray(self.vectors, dtype=np.float32)
        labels = np.asarray(self.labels).astype(np.int32, copy=False)
        image_index = np.asarray(self.image_index).astype(np.int32, copy=False)
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "image_index", image_index)
        object.__setattr__(self, "class_names", [str(n) for n in self.class_names])
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be [M, C], got shape {vectors.shape}")
        m = vectors.shape[0]
        if labels.shape != (m,) or image_index.shape != (m,):
            raise ValueError(f"labels {labels.shape} and image_index {image_index.shape} must both be ({m},)")
        if not self.class_names:
            raise ValueError("class_names must name at least one class")
        if m and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got [{labels.min()}, {labels.max()}]")
        norms = np.linalg.norm(vectors, axis=1)
        if m and not np.all(np.abs(norms - 1.0) <= UNIT_TOLERANCE):
            raise ValueError("bank vectors must be finite and unit-norm")

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def class_counts(self) -> np.ndarray:
        """Prototypes per class, ``int64[num_classes]``."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    def subset(self, keep: np.ndarray) -> PrototypeBank:
        """The bank restricted to the rows where the boolean ``keep`` is True."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (len(self),):
            raise ValueError(f"keep must be ({len(self)},), got {keep.shape}")
        return PrototypeBank(self.vectors[keep], self.labels[keep], self.image_index[keep], self.class_names)


def prototypes_for_image(
    features: np.ndarray,
    geometry: PatchGeometry,
    label_map: np.ndarray,
    classes: Iterable[int],
    purify: PurifyParams = PurifyParams(),
    background: int | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Prototypes of one bank image: ``(float32[n, C] unit vectors, int32[n] labels)``.

    ``label_map`` (``geometry.image_hw``) is purified per class of ``classes`` plus ``background``;
    each surviving region is soft-pooled over the ``[Hp, Wp, C]`` ``features``. Regions whose pooled
    vector is zero or not finite are dropped.
    """
    features = np.asarray(features)
    if features.ndim != 3:
        raise ValueError(f"features must be [Hp, Wp, C], got shape {features.shape}")
    regions = purify.apply(label_map, classes, background=background)
    if not regions:
        return np.zeros((0, features.shape[2]), np.float32), np.zeros(0, np.int32)
    labels = np.fromiter(regions.keys(), dtype=np.int32, count=len(regions))
    vectors = pool_masks(features, geometry, np.stack(list(regions.values())))
    norms = np.linalg.norm(vectors, axis=1)
    valid = np.isfinite(norms) & (norms >= MIN_NORM)
    return vectors[valid], labels[valid]


def filter_outliers(
    vectors: np.ndarray,
    labels: np.ndarray,
    drop_ratio: float = 0.25,
    background_drop_ratio: float = 0.0,
    background: int = 0,
) -> np.ndarray:
    """Boolean keep-mask dropping, per class, the ``floor(n * ratio)`` prototypes farthest from its mean.

    Distance is Euclidean to the (unnormalised) class mean; ``ratio`` is ``drop_ratio`` for foreground
    classes and ``background_drop_ratio`` for ``background``. Equal distances drop the later row first.
    """
    vectors = np.asarray(vectors)
    labels = np.asarray(labels)
    if vectors.ndim != 2 or labels.shape != (vectors.shape[0],):
        raise ValueError(f"vectors [M, C] and labels [M] expected, got {vectors.shape} and {labels.shape}")
    for name, ratio in (("drop_ratio", drop_ratio), ("background_drop_ratio", background_drop_ratio)):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {ratio}")
    keep = np.ones(labels.shape[0], dtype=bool)
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        ratio = background_drop_ratio if cls == background else drop_ratio
        n_drop = int(rows.size * ratio)
        if n_drop == 0:
            continue
        members = vectors[rows].astype(np.float64)
        distance = np.linalg.norm(members - members.mean(axis=0), axis=1)
        farthest = np.argsort(distance, kind="stable")[rows.size - n_drop :]
        keep[rows[farthest]] = False
    return keep


class BankBuilder:
    """Collects per-image prototypes and assembles the filtered ``PrototypeBank``.

    With ``max_per_class``, a class takes no more prototypes once it holds that many (added in the
    caller's order, e.g. images by content key): the bank's size and memory are bounded by the number of
    classes whatever the collection's size; below the cap nothing changes.
    """

    def __init__(self, class_names: list[str], dim: int | None = None, max_per_class: int | None = None) -> None:
        self.class_names = list(class_names)
        self.dim = dim
        self.max_per_class = max_per_class
        self._count = np.zeros(len(self.class_names), np.int64)
        self._vectors: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._images: list[np.ndarray] = []

    def full(self, classes: Iterable[int]) -> bool:
        """Whether every class of ``classes`` already holds ``max_per_class`` prototypes."""
        return self.max_per_class is not None and all(self._count[c] >= self.max_per_class for c in classes)

    def add(self, image_index: int, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Add one bank image's prototypes (as returned by ``prototypes_for_image``)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int32)
        if vectors.ndim != 2 or labels.shape != (vectors.shape[0],):
            raise ValueError(f"vectors [n, C] and labels [n] expected, got {vectors.shape} and {labels.shape}")
        if self.dim is None:
            self.dim = vectors.shape[1]
        elif vectors.shape[1] != self.dim:
            raise ValueError(f"prototype dim {vectors.shape[1]} != bank dim {self.dim}")
        if self.max_per_class is not None:
            keep = np.zeros(len(labels), bool)
            for i, c in enumerate(labels):
                if self._count[c] < self.max_per_class:
                    keep[i] = True
                    self._count[c] += 1
            vectors, labels = vectors[keep], labels[keep]
        else:
            np.add.at(self._count, labels, 1)
        self._vectors.append(vectors)
        self._labels.append(labels)
        self._images.append(np.full(labels.shape[0], image_index, np.int32))

    def build(self, drop_ratio: float = 0.25, background_drop_ratio: float = 0.0, background: int = 0) -> PrototypeBank:
        """The bank of everything added, after ``filter_outliers`` with these ratios."""
        if self.dim is None:
            raise ValueError("no prototypes were added and no dim was given")
        vectors = np.concatenate(self._vectors) if self._vectors else np.zeros((0, self.dim), np.float32)
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, np.int32)
        images = np.concatenate(self._images) if self._images else np.zeros(0, np.int32)
        order = np.argsort(images, kind="stable")  # image order, however the images were added
        vectors, labels, images = vectors[order], labels[order], images[order]
        bank = PrototypeBank(vectors, labels, images, self.class_names)
        return bank.subset(filter_outliers(vectors, labels, drop_ratio, background_drop_ratio, background))
