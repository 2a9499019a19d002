"""Stage 4, seed: the pseudo-labels of the labelled images (the main job's output), from image labels,
proposals and features alone, or (``seed.method`` 'clip') from the proposals' CLIP embeddings against the text
embeddings of the class names, or ('boxes') from the classes of the detector's boxes the proposals were made in.
Published as a ``pseudo_labels`` version."""

from __future__ import annotations

import numpy as np

from maskbank.flows import runtime
from maskbank.flows.keys import code_version, digest
from maskbank.flows.params import SeedParams
from maskbank.flows.progress import StageProgress
from maskbank.flows.refs import DatasetRef, VersionRef
from maskbank.flows.stages.common import cached_task
from maskbank.flows.stages.labels import (
    EVIDENCE, LabelVersionWriter, blocks, label_version_ref, pooled_reader, unskipped,
)
from maskbank.storage.layout import POOLED, PROPOSALS, PSEUDO_LABELS
from maskbank.storage.store import Store
from maskbank.storage.versions import version_exists, version_id
from maskbank.tasks.box_seed import box_seed_labels
from maskbank.tasks.classes import multi_hot
from maskbank.tasks.clip_seed import (
    clip_seed_labels, dust_bin, image_class_scores, text_embeddings, zero_shot_image_labels,
)
from maskbank.tasks.collection import label_evidence
from maskbank.tasks.models.device import resolve_device
from maskbank.tasks.seed import seed_images

KIND = PSEUDO_LABELS
BLOCK_IMAGES = 256
"""Images whose CLIP embeddings or box classes are read and seeded at once."""
MODULES = ("maskbank.tasks.seed", "maskbank.tasks.clip_seed", "maskbank.tasks.box_seed", "maskbank.tasks.paint", "maskbank.tasks.coverage",
           "maskbank.tasks.collection", "maskbank.flows.stages.labels", __name__)


@cached_task("seed", MODULES)
def seed_collection(
    store: str, collection: DatasetRef, proposals_key: str, pooled_key: str | None, params: SeedParams,
    skip: list[str] | None = None, device: str = "auto",
) -> VersionRef:
    """Seed every labelled image's proposals with one of its labels or background; paint the label maps.
    ``pooled_key``: the proposals' features (method 'labels') or CLIP embeddings ('clip'); None with 'boxes'.

    The reference carries the version's metrics: what looks wrong in its maps against the image labels."""
    st = Store.open(store, create=False)
    rows = unskipped(collection.labelled_indices(), collection.image_keys, skip)
    keys = [collection.image_keys[i] for i in rows]
    vparams = {"seed": params.model_dump(), "background": collection.has_background, "proposals": proposals_key,
               "pooled": pooled_key, "images": digest(keys)}
    code = code_version(MODULES)
    vid = version_id(KIND, vparams, datasets=collection.fingerprints, code_version=code)
    if version_exists(st, vid) and not st.label_maps_missing(vid, keys):
        return label_version_ref(st, store, KIND, vid)

    num_classes = len(collection.class_names)
    image_labels = multi_hot([collection.labels[i] for i in rows], num_classes)
    counts = (st.element_counts(PROPOSALS, proposals_key, keys) if params.method == "boxes"
              else st.element_counts(POOLED, pooled_key, keys))
    if params.method == "boxes":
        labels, confidence = _box_seeds(st, proposals_key, keys, image_labels, collection.has_background)
        metrics = {}
    elif params.method == "clip":
        labels, confidence = _clip_seeds(pooled_reader(st, pooled_key, keys), counts, image_labels, collection,
                                         params, device)
        metrics = {}
    else:
        read = pooled_reader(st, pooled_key, keys)
        with StageProgress("seed", int(counts.sum()) * (1 + params.rounds), unit="proposal",
                           what="proposals scored, all rounds") as progress:
            result = seed_images(
                read, counts, image_labels,
                saliency=True, config=params.config(background=collection.has_background),  # images in key order: the caps take the first by key
                device=resolve_device(device), progress=progress.advance,
            )
        labels, confidence = result.labels, result.confidence
        metrics = {EVIDENCE: label_evidence(image_labels, collection.class_names)}
    out = LabelVersionWriter(st, KIND, vid, proposals_key, num_classes, nms_iou=None,
                             class_names=collection.class_names)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for j, i in enumerate(rows):
        sel = slice(offsets[j], offsets[j + 1])
        out.add(keys[j], collection.image_ids[i], labels[sel], confidence[sel], collection.labels[i])
    out.publish(vparams, (), collection.fingerprints, code, metrics=metrics)
    return label_version_ref(st, store, KIND, vid)


@cached_task("predict", MODULES)
def predict_image_labels(
    store: str, collection: DatasetRef, pooled_key: str, params: SeedParams, skip: list[str] | None = None,
    device: str = "auto",
) -> DatasetRef:
    """The collection with labels for its images that have none (``params.zero_shot_labels``): the classes
    their proposals' CLIP embeddings (``pooled_key``) are taken for."""
    rows = unskipped(collection.unlabelled_indices(), collection.image_keys, skip)
    if not rows:
        return collection
    st = Store.open(store, create=False)
    keys = [collection.image_keys[i] for i in rows]
    counts = st.element_counts(POOLED, pooled_key, keys)
    read = pooled_reader(st, pooled_key, keys)
    class_text, bin_text = _text(collection, params, device)
    scores = np.zeros((len(rows), len(collection.class_names)), np.float32)
    with StageProgress("predict", len(rows), unit="image", what="images without labels labelled") as progress:
        for images, features, index in _clip_blocks(read, counts):
            scores[images] = image_class_scores(features, index - images[0], len(images), class_text, bin_text,
                                                params.clip_config())
            progress.advance(len(images))
    mode = params.zero_shot_labels
    predicted = zero_shot_image_labels(scores, top_k=params.zero_shot_top_k if mode == "top_k" else None,
                                       threshold=params.zero_shot_threshold if mode == "threshold" else None)
    labels = list(collection.labels)
    for i, classes in zip(rows, predicted):
        labels[i] = classes
    note = f"{len(rows)} images without labels took the classes {params.text_model} sees in them ({mode})"
    return collection.model_copy(update={"labels": labels, "notes": [*collection.notes, note]})


def _box_seeds(st: Store, proposals_key: str, keys: list[str], image_labels: np.ndarray,
               background: bool) -> tuple[np.ndarray, np.ndarray]:
    """Labels and confidences of every proposal of ``keys`` from the classes of the boxes they were made in,
    a block of images at a time."""
    labels, confidence = [], []
    with StageProgress("seed", len(keys), unit="image", what="images seeded from their boxes") as progress:
        for block in blocks(len(keys), BLOCK_IMAGES):
            arrays, index = st.read_elements(PROPOSALS, proposals_key, [keys[i] for i in block],
                                             ["box_class", "box_score"])
            lab, conf = box_seed_labels(arrays["box_class"], arrays["box_score"], index,
                                        image_labels[block.start:block.stop], background)
            labels.append(lab)
            confidence.append(conf)
            progress.advance(len(block))
    return (np.concatenate(labels) if labels else np.zeros(0, np.int32),
            np.concatenate(confidence) if confidence else np.zeros(0, np.float32))


def _clip_blocks(read, counts: np.ndarray):
    """``(images, embeddings, image of each embedding)`` of the images ``read`` gives (positions ``0..len(counts)``,
    each with ``counts`` proposals), :data:`BLOCK_IMAGES` images at a time."""
    for block in blocks(len(counts), BLOCK_IMAGES):
        images = np.arange(block.start, block.stop)
        features, _ = read(images)
        yield images, features, np.repeat(images, counts[images])


def _text(collection: DatasetRef, params: SeedParams, device: str) -> tuple[np.ndarray, np.ndarray]:
    """Unit text embeddings of the class names (row 0, background or the placeholder where there is none, is
    zero) and of the dust bin's words, by ``params.text_model``."""
    encode = runtime.text_encoder(params.text_model, device)
    names = collection.class_names
    classes = text_embeddings(encode, names[1:])
    return (np.concatenate([np.zeros((1, classes.shape[1]), np.float32), classes]),
            text_embeddings(encode, dust_bin(names[1:])))


def _clip_seeds(read, counts: np.ndarray, image_labels: np.ndarray, collection: DatasetRef, params: SeedParams,
                device: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and confidences of every proposal from their CLIP embeddings (``read``), a block of images at a
    time, against the text embeddings of the class names and of the dust bin."""
    class_text, bin_text = _text(collection, params, device)
    labels, confidence = [], []
    with StageProgress("seed", int(counts.sum()), unit="proposal", what="proposals classified") as progress:
        for _, features, index in _clip_blocks(read, counts):
            lab, conf = clip_seed_labels(features, index, image_labels, class_text, bin_text,
                                         background=collection.has_background, config=params.clip_config())
            labels.append(lab)
            confidence.append(conf)
            progress.advance(len(lab))
    return (np.concatenate(labels) if labels else np.zeros(0, np.int32),
            np.concatenate(confidence) if confidence else np.zeros(0, np.float32))
