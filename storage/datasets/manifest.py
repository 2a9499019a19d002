"""The one dataset type every reader produces: image records, class names, truth and a fingerprint."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from maskbank.storage.datasets.classes import ClassMap
from maskbank.storage.datasets.hashing import FileHasher, default_hash_cache
from maskbank.storage.datasets.images import load_rgb


@dataclass(frozen=True)
class ImageRecord:
    """One image. ``labels``: dataset class indices without background, ``None`` when unlabelled,
    ``()`` when labelled with no foreground class."""

    image_id: str
    path: Path
    labels: tuple[int, ...] | None
    height: int | None
    width: int | None
    has_truth: bool


class TruthSource(Protocol):
    """Where a reader's pixel ground truth comes from."""

    def read(self, image_id: str) -> np.ndarray:
        """Dataset class indices ``[H, W]`` (``ClassMap.truth_dtype``), ignore pixels at ``ignore_index``."""

    def digest(self, image_ids: Sequence[str], hasher: FileHasher) -> str:
        """Hash of everything the truth of ``image_ids`` is read from."""


@dataclass
class Dataset:
    """An image collection with image-level labels and optional pixel truth.

    ``class_names[0]`` is ``"background"``; labels and truth use indices into ``class_names``.
    ``has_background`` says whether index 0 is a real class of the source or only that placeholder (a class
    list without background, see :class:`ClassMap`).
    ``skipped`` lists ``(image_id, reason)`` for images the reader could not use; ``notes`` says what was
    read in a way worth knowing (empty label sets, dropped unknown names). ``exif_transpose`` says whether
    images are shown with their EXIF orientation applied (off where annotations refer to stored pixels).
    """

    name: str
    root: Path
    classes: ClassMap
    records: list[ImageRecord]
    truth_source: TruthSource | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    exif_transpose: bool = True
    spec: dict | None = None
    """How it was read: :class:`~maskbank.storage.datasets.DatasetSpec` as a mapping with absolute paths
    (set by ``open_dataset``), so it can be read again the same way."""

    def __post_init__(self) -> None:
        self._by_id = {}
        for r in self.records:
            if r.image_id in self._by_id:
                raise ValueError(f"duplicate image id {r.image_id!r} in dataset {self.name!r}")
            self._by_id[r.image_id] = r
        self._fingerprint: str | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self.classes.class_names)

    @property
    def ignore_index(self) -> int:
        return self.classes.ignore_index

    @property
    def has_background(self) -> bool:
        return self.classes.has_background

    @property
    def image_ids(self) -> list[str]:
        return [r.image_id for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._by_id

    def record(self, image_id: str) -> ImageRecord:
        try:
            return self._by_id[image_id]
        except KeyError:
            raise KeyError(f"no image {image_id!r} in dataset {self.name!r}") from None

    def image(self, image_id: str) -> np.ndarray:
        """The image as ``uint8[H, W, 3]`` RGB at full size, in the frame its truth and sizes refer to."""
        return load_rgb(self.record(image_id).path, exif_transpose=self.exif_transpose, max_pixels=None)

    def truth(self, image_id: str) -> np.ndarray:
        """Pixel truth ``[H, W]`` (uint8, or uint16 past 254 classes); ``ignore_index`` marks ignored pixels."""
        rec = self.record(image_id)
        if not rec.has_truth or self.truth_source is None:
            raise LookupError(f"image {image_id!r} of dataset {self.name!r} has no pixel truth")
        return self.truth_source.read(image_id)

    def subset(self, image_ids: Iterable[str]) -> Dataset:
        """The records named by ``image_ids`` (dataset order kept); unknown ids raise ``KeyError``."""
        wanted = set(image_ids)
        unknown = sorted(wanted - set(self._by_id))
        if unknown:
            raise KeyError(f"unknown image ids in dataset {self.name!r}: {unknown[:10]}")
        return Dataset(
            name=self.name,
            root=self.root,
            classes=self.classes,
            records=[r for r in self.records if r.image_id in wanted],
            truth_source=self.truth_source,
            notes=list(self.notes),
            exif_transpose=self.exif_transpose,
            spec=self.spec,
        )

    def fingerprint(self, hash_cache: str | Path | None = None) -> str:
        """sha256 over sorted ``(image_id, file sha256, labels)``, class names and the truth's content.

        Independent of where the dataset lives and of its name. File hashes are cached in the json
        sidecar ``hash_cache`` (default :func:`default_hash_cache` of ``root``).
        """
        if self._fingerprint is None:
            hasher = FileHasher(hash_cache if hash_cache is not None else default_hash_cache(self.root))
            h = hashlib.sha256(b"maskbank-dataset-1\0")
            h.update(_canon(self.class_names))
            for r in sorted(self.records, key=lambda r: r.image_id):
                labels = None if r.labels is None else list(r.labels)
                h.update(_canon([r.image_id, hasher.sha256(r.path), labels, r.has_truth]))
            truth_ids = sorted(r.image_id for r in self.records if r.has_truth)
            if self.truth_source is not None and truth_ids:
                h.update(_canon(["truth", self.classes.digest_key(), self.truth_source.digest(truth_ids, hasher)]))
            hasher.save()
            self._fingerprint = h.hexdigest()
        return self._fingerprint


def _canon(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"
