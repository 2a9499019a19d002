"""What the stages that label proposals share: streamed reads of pooled features, and label versions
(one painted label map per image plus the per-proposal labels and scores) written a batch at a time, with
what looks wrong in their maps against the images' labels (images all background, labels without a pixel)
counted as the maps are painted and kept in the version's metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from maskbank.flows.refs import VersionRef
from maskbank.storage.layout import POOLED
from maskbank.storage.store import Store
from maskbank.storage.versions import get_version, publish_version
from maskbank.tasks.coverage import CoverageTally, painted_classes
from maskbank.tasks.paint import paint_by_score
from maskbank.tasks.segmenter import fill_uncovered

NEUTRAL_SALIENCY = 0.5
"""Saliency of proposals whose features have no saliency head (no prior either way)."""
COVERAGE = "coverage"
"""Key of a label version's metrics holding its looks-wrong counts (:meth:`CoverageTally.summary`)."""
EVIDENCE = "evidence"
"""Key of a pseudo-label version's metrics holding what its image labels gave seeding to go on
(:func:`maskbank.tasks.collection.label_evidence`)."""


def pooled_reader(st: Store, pooled_key: str, keys: Sequence[str]):
    """A reader of the pooled features (and saliency) of images given by position in ``keys``."""

    def read(images: np.ndarray, saliency: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        names = ["features", "saliency"] if saliency else ["features"]
        arrays, _ = st.read_elements(POOLED, pooled_key, [keys[i] for i in images], names)
        sal = None
        if saliency:
            sal = np.where(np.isnan(arrays["saliency"]), NEUTRAL_SALIENCY, arrays["saliency"]).astype(np.float32)
        return arrays["features"], sal

    return read


def key_order(rows: Sequence[int], image_keys: Sequence[str]) -> list[int]:
    """``rows`` (positions in ``image_keys``) in content-key order: the order in which the per-image stages
    write their shards, so that reading them a block at a time reads each chunk about once, and an order
    that does not depend on the datasets' own or on which shard finished first."""
    return sorted(rows, key=lambda i: image_keys[i])


def unskipped(rows: Sequence[int], image_keys: Sequence[str], skip: Sequence[str] | None) -> list[int]:
    """``rows`` (positions in ``image_keys``) whose image is not in ``skip`` (the images the per-image stages
    could not process), in content-key order (:func:`key_order`)."""
    skipped = set(skip or ())
    return key_order([i for i in rows if image_keys[i] not in skipped], image_keys)


def blocks(n: int, size: int) -> list[range]:
    """Consecutive ranges of ``size`` positions over ``n``."""
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


def proposal_rows(arrays: Mapping[str, np.ndarray]) -> tuple[list[str], list[slice]]:
    """A label version's image keys (its ``image_key`` array, as :class:`LabelVersionWriter` publishes it) and
    the slice of its per-proposal arrays that each image's proposals take."""
    keys = [str(k) for k in arrays["image_key"]]
    bounds = np.searchsorted(arrays["proposal_image"], np.arange(len(keys) + 1))
    return keys, [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def coverage_of(ref: VersionRef) -> dict | None:
    """A label version's looks-wrong counts, as its reference carries them (None for a version without)."""
    return (ref.metrics or {}).get(COVERAGE)


def evidence_of(ref: VersionRef) -> dict | None:
    """What a pseudo-label version's image labels gave seeding, as its reference carries it (None without)."""
    return (ref.metrics or {}).get(EVIDENCE)


def label_version_ref(st: Store, store: str, kind: str, version_id: str) -> VersionRef:
    """The reference of a label version published in ``st`` (named ``store`` by the flow), with its metrics
    (the looks-wrong counts) as stored, so that a version computed before reads the same as a new one."""
    return VersionRef(store=store, id=version_id, kind=kind, metrics=get_version(st, version_id).metrics)


class LabelVersionWriter:
    """Paints each image's label map from its proposals' labels and scores, stores the maps a batch at a
    time, and publishes the version with the per-proposal labels and scores. As each map is painted it
    notes which classes it paints against the image's labels (given to :meth:`add`); the counts go in the
    version's metrics under :data:`COVERAGE`. ``class_names`` name the classes there (default: their
    indices)."""

    def __init__(self, st: Store, kind: str, version_id: str, proposals_key: str, num_classes: int,
                 nms_iou: float | None, class_names: Sequence[str] | None = None) -> None:
        self.st, self.kind, self.version_id = st, kind, version_id
        self.proposals_key, self.num_classes, self.nms_iou = proposals_key, num_classes, nms_iou
        self.maps = st.label_map_writer(version_id)
        self.coverage = CoverageTally(class_names if class_names is not None else [str(c) for c in range(num_classes)])
        self.keys: list[str] = []
        self.labels: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []

    def add(self, image_key: str, image_id: str, labels: np.ndarray, scores: np.ndarray,
            image_labels: Sequence[int] | None = None, masks: np.ndarray | None = None,
            fill: np.ndarray | None = None) -> None:
        """Paint and store one image's map from its proposals' ``labels`` and ``scores``; ``image_labels``
        (its class indices, None when it has none) are what the map is checked against. ``masks``: the
        proposals' masks when the caller has read them already; ``fill``: a label map whose labels the
        pixels no labelled proposal covers take (a proposal labelled -1, none, leaves its pixels to it)."""
        if masks is None:
            masks = self.st.read_proposals(self.proposals_key, image_key).masks()
        label_map = paint_by_score(masks, labels, scores, nms_iou=self.nms_iou, num_classes=self.num_classes)
        if fill is not None:
            label_map = fill_uncovered(label_map, masks[np.asarray(labels) >= 0].any(axis=0), fill)
        self.coverage.add(image_id, painted_classes(label_map, self.num_classes), image_labels)
        self.maps.add(image_key, label_map, image_id)
        self.keys.append(image_key)
        self.labels.append(np.asarray(labels, np.int32))
        self.scores.append(np.asarray(scores, np.float32))

    def publish(self, params: Mapping, parents: Sequence[str], datasets: Sequence[str], code_version: str,
                metrics: Mapping | None = None) -> str:
        """Publish the version, with ``metrics`` beside its looks-wrong counts; returns its id."""
        self.maps.flush()
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)
        arrays = {"image_key": np.array(self.keys),
                  "proposal_image": np.repeat(np.arange(len(self.keys), dtype=np.int32), [len(x) for x in self.labels]),
                  "proposal_label": cat(self.labels, np.int32), "proposal_score": cat(self.scores, np.float32)}
        dims = {"image_key": ("image",), "proposal_image": ("proposal",), "proposal_label": ("proposal",),
                "proposal_score": ("proposal",)}
        info = publish_version(self.st, self.kind, params, parents, datasets, code_version=code_version,
                               arrays=arrays, dims=dims, metrics={**(metrics or {}), COVERAGE: self.coverage.summary()})
        assert info.id == self.version_id
        return info.id
