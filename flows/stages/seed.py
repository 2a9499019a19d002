"""Stage 4, seed: the pseudo-labels of the labelled images (the main job's output), from image labels,
proposals and features alone. Published as a ``pseudo_labels`` version."""

from __future__ import annotations

import numpy as np

from maskbank.flows.keys import code_version, digest
from maskbank.flows.params import SeedParams
from maskbank.flows.progress import StageProgress
from maskbank.flows.refs import DatasetRef, VersionRef
from maskbank.flows.stages.common import cached_task
from maskbank.flows.stages.labels import EVIDENCE, LabelVersionWriter, label_version_ref, pooled_reader, unskipped
from maskbank.storage.layout import POOLED, PSEUDO_LABELS
from maskbank.storage.store import Store
from maskbank.storage.versions import version_exists, version_id
from maskbank.tasks.classes import multi_hot
from maskbank.tasks.collection import label_evidence
from maskbank.tasks.models.device import resolve_device
from maskbank.tasks.seed import seed_images

KIND = PSEUDO_LABELS
MODULES = ("maskbank.tasks.seed", "maskbank.tasks.paint", "maskbank.tasks.coverage", "maskbank.tasks.collection",
           "maskbank.flows.stages.labels", __name__)


@cached_task("seed", MODULES)
def seed_collection(
    store: str, collection: DatasetRef, proposals_key: str, pooled_key: str, params: SeedParams,
    skip: list[str] | None = None, device: str = "auto",
) -> VersionRef:
    """Seed every labelled image's proposals with one of its labels or background; paint the label maps.

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
    evidence = label_evidence(image_labels, collection.class_names)
    counts = st.element_counts(POOLED, pooled_key, keys)
    with StageProgress("seed", int(counts.sum()) * (1 + params.rounds), unit="proposal",
                       what="proposals scored, all rounds") as progress:
        result = seed_images(
            pooled_reader(st, pooled_key, keys), counts, image_labels,
            saliency=True, config=params.config(background=collection.has_background),  # images in key order: the caps take the first by key
            device=resolve_device(device), progress=progress.advance,
        )
    out = LabelVersionWriter(st, KIND, vid, proposals_key, num_classes, nms_iou=None,
                             class_names=collection.class_names)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for j, i in enumerate(rows):
        sel = slice(offsets[j], offsets[j + 1])
        out.add(keys[j], collection.image_ids[i], result.labels[sel], result.confidence[sel], collection.labels[i])
    out.publish(vparams, (), collection.fingerprints, code, metrics={EVIDENCE: evidence})
    return label_version_ref(st, store, KIND, vid)
