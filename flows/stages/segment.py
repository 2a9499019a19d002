"""Stage 4b, segment: the second stage (``tasks/segmenter.py``). A linear head trained on the seeds over the
stored patch features, published as a ``segmenter`` version (its weights are the version's arrays); the
pseudo-labels with the pixels no proposal covers filled by it (a ``pseudo_labels`` version whose parents are
the seeds and the head; with ``arbitrate_below``, the least confident seeds relabelled by it too); and,
instead of retrieval, the images to label labelled by it (a ``predictions`` version). Images are read a
block at a time, so memory holds one block and the head's token sample."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import dask
import numpy as np

from maskbank.flows.keys import code_version, digest
from maskbank.flows.progress import StageProgress
from maskbank.flows.refs import DatasetRef, VersionRef
from maskbank.flows.stages.common import cached_task
from maskbank.flows.stages.labels import (
    EVIDENCE, LabelVersionWriter, blocks, key_order, label_version_ref, proposal_rows, unskipped,
)
from maskbank.storage.layout import PREDICTIONS, PSEUDO_LABELS, SEGMENTER
from maskbank.storage.store import Store
from maskbank.storage.versions import get_version, publish_version, read_version, version_exists, version_id
from maskbank.tasks.segmenter import (
    LinearHead, SegmenterConfig, TokenSample, allowed_classes, pixel_labels, proposal_cover, proposal_votes,
    token_targets, train_head,
)
from maskbank.tasks.models.device import resolve_device

MODULES = ("maskbank.tasks.segmenter", "maskbank.tasks.paint", "maskbank.tasks.coverage",
           "maskbank.flows.stages.labels", __name__)
BLOCK_IMAGES = 64
"""Images read at once (their masks and patch features are in memory together)."""


def _read(st: Store, proposals_key: str, features_key: str, image_key: str, cover: bool):
    """One image's proposal masks, patch features, geometry and (with ``cover``, else None) each proposal's
    cover of each token."""
    masks = st.read_proposals(proposals_key, image_key).masks()
    features, geometry = st.read_features(features_key, image_key)
    return masks, features, geometry, proposal_cover(geometry, masks) if cover else None


def _read_blocks(st: Store, proposals_key: str, features_key: str, keys: Sequence[str], cover: bool = True):
    """``(position, (masks, features, geometry, cover))`` of every image of ``keys``, read a block at a time
    (``cover``: whether the proposals' cover of the tokens is needed)."""
    for block in blocks(len(keys), BLOCK_IMAGES):
        parts = [dask.delayed(_read)(st, proposals_key, features_key, keys[j], cover) for j in block]
        yield from zip(block, dask.compute(*parts, scheduler="threads"))


@cached_task("segmenter", MODULES)
def train_segmenter(
    store: str, collection: DatasetRef, labels_version: VersionRef, proposals_key: str, features_key: str,
    config: SegmenterConfig, device: str = "auto",
) -> VersionRef:
    """Train the head with ``config`` (``SegmentParams.config()``: the training settings alone, so that the
    other settings of the stage leave it cached) on ``labels_version``'s per-proposal labels and confidences
    (its images' proposals and patch features) and publish it as a ``segmenter`` version."""
    st = Store.open(store, create=False)
    seeds = read_version(st, labels_version.id).arrays
    keys, rows = proposal_rows(seeds)
    vparams = {"segment": asdict(config), "background": collection.has_background,
               "proposals": proposals_key, "features": features_key}
    code = code_version(MODULES)
    vid = version_id(SEGMENTER, vparams, [labels_version.id], collection.fingerprints, code_version=code)
    if version_exists(st, vid):
        return VersionRef(store=store, id=vid, kind=SEGMENTER)

    row_of = {k: i for i, k in enumerate(collection.image_keys)}
    sample = TokenSample(config.max_tokens, seed=config.seed)
    order = key_order(range(len(keys)), keys)
    with StageProgress("segmenter", len(keys), what="labelled images read for the head") as progress:
        for j, (_, features, _, cover) in _read_blocks(st, proposals_key, features_key, [keys[i] for i in order]):
            i = order[j]
            labels, weights = token_targets(cover, seeds["proposal_label"][rows[i]], seeds["proposal_score"][rows[i]])
            allowed = allowed_classes(collection.labels[row_of[keys[i]]] or [], collection.has_background)
            sample.add(keys[i], features.reshape(len(labels), -1), labels, weights, allowed)
            progress.advance(1)
    num_classes = len(collection.class_names)
    with StageProgress("segmenter-train", config.epochs, unit="epoch", what="training epochs") as progress:
        head, loss = train_head(sample, num_classes, config, device=resolve_device(device), progress=progress.advance)
    arrays = {"weight": head.weight, "bias": head.bias, "class_name": np.array(collection.class_names)}
    dims = {"weight": ("channel", "class"), "bias": ("class",), "class_name": ("class",)}
    info = publish_version(st, SEGMENTER, vparams, [labels_version.id], collection.fingerprints, code_version=code,
                           arrays=arrays, dims=dims,
                           metrics={"tokens": len(sample), "tokens_offered": sample.offered, "images": len(keys),
                                    "loss": loss})
    return VersionRef(store=store, id=info.id, kind=SEGMENTER)


def load_head(st: Store, segmenter_version: str) -> tuple[LinearHead, list[str], bool]:
    """A ``segmenter`` version's head, class names and whether they have a background class."""
    a = read_version(st, segmenter_version).arrays
    head = LinearHead(np.asarray(a["weight"], np.float32), np.asarray(a["bias"], np.float32))
    return head, [str(c) for c in a["class_name"]], bool(get_version(st, segmenter_version).params["background"])


@cached_task("fill", MODULES)
def fill_pseudo_labels(
    store: str, collection: DatasetRef, seeds_version: VersionRef, segmenter_version: VersionRef,
    proposals_key: str, features_key: str, arbitrate_below: float = 0.0,
) -> VersionRef:
    """The seeds' label maps with every pixel no proposal covers labelled by the head among the image's
    labels (and background where it is a class). The per-proposal labels and scores are the seeds', except
    that a seed of confidence below ``arbitrate_below`` takes the head's vote and its mean probability."""
    st = Store.open(store, create=False)
    seeds = read_version(st, seeds_version.id).arrays
    keys, rows = proposal_rows(seeds)
    vparams = {"fill": "segmenter", "arbitrate_below": arbitrate_below, "background": collection.has_background,
               "proposals": proposals_key, "features": features_key, "images": digest(keys)}
    code = code_version(MODULES)
    parents = [seeds_version.id, segmenter_version.id]
    vid = version_id(PSEUDO_LABELS, vparams, parents, collection.fingerprints, code_version=code)
    if version_exists(st, vid) and not st.label_maps_missing(vid, keys):
        return label_version_ref(st, store, PSEUDO_LABELS, vid)

    head, _, _ = load_head(st, segmenter_version.id)
    row_of = {k: i for i, k in enumerate(collection.image_keys)}
    out = LabelVersionWriter(st, PSEUDO_LABELS, vid, proposals_key, len(collection.class_names), nms_iou=None,
                             class_names=collection.class_names)
    with StageProgress("fill", len(keys), what="pseudo-label maps filled") as progress:
        for i, (masks, features, geometry, cover) in _read_blocks(st, proposals_key, features_key, keys,
                                                                  cover=arbitrate_below > 0):
            labels = collection.labels[row_of[keys[i]]]
            allowed = allowed_classes(labels or [], collection.has_background)
            fill, _ = pixel_labels(head, features, geometry, allowed)
            seed_labels, seed_scores = seeds["proposal_label"][rows[i]], seeds["proposal_score"][rows[i]]
            unsure = seed_scores < arbitrate_below
            if unsure.any():
                votes, vote_scores = proposal_votes(head, features, cover[unsure], allowed)
                seed_labels, seed_scores = seed_labels.copy(), seed_scores.copy()
                seed_labels[unsure], seed_scores[unsure] = votes, vote_scores
            out.add(keys[i], collection.image_ids[row_of[keys[i]]], seed_labels, seed_scores, labels, masks=masks,
                    fill=fill)
            progress.advance(1)
    evidence = (seeds_version.metrics or {}).get(EVIDENCE)
    out.publish(vparams, parents, collection.fingerprints, code, metrics={EVIDENCE: evidence} if evidence else None)
    return label_version_ref(st, store, PSEUDO_LABELS, vid)


@cached_task("segment", MODULES)
def segment_targets(
    store: str, targets: DatasetRef, segmenter_version: VersionRef, proposals_key: str, features_key: str,
    skip: list[str] | None = None,
) -> VersionRef:
    """Label the target images with the head alone: each proposal takes its class of highest mean
    probability (its score), pixels no proposal covers the head's class (never class 0 where the head's
    class list has no background, which makes it a placeholder)."""
    st = Store.open(store, create=False)
    head, class_names, background = load_head(st, segmenter_version.id)
    rows = unskipped(range(len(targets.image_keys)), targets.image_keys, skip)
    keys = [targets.image_keys[i] for i in rows]
    vparams = {"segment_targets": True, "background": background, "proposals": proposals_key,
               "features": features_key, "images": digest(keys)}
    code = code_version(MODULES)
    vid = version_id(PREDICTIONS, vparams, [segmenter_version.id], targets.fingerprints, code_version=code)
    if version_exists(st, vid) and not st.label_maps_missing(vid, keys):
        return label_version_ref(st, store, PREDICTIONS, vid)

    classes = list(range(0 if background else 1, head.num_classes))
    same_classes = list(targets.class_names) == class_names
    out = LabelVersionWriter(st, PREDICTIONS, vid, proposals_key, head.num_classes, nms_iou=None,
                             class_names=class_names)
    with StageProgress("segment", len(keys), what="images labelled by the head") as progress:
        for j, (masks, features, geometry, cover) in _read_blocks(st, proposals_key, features_key, keys):
            labels, scores = proposal_votes(head, features, cover, classes)
            fill, _ = pixel_labels(head, features, geometry, classes)
            out.add(keys[j], targets.image_ids[rows[j]], labels, scores,
                    targets.labels[rows[j]] if same_classes else None, masks=masks, fill=fill)
            progress.advance(1)
    out.publish(vparams, [segmenter_version.id], targets.fingerprints, code)
    return label_version_ref(st, store, PREDICTIONS, vid)
