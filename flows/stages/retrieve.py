"""Stage 6, retrieve: label each image's proposals by k-NN over the prototype bank and paint them.

Published as a ``predictions`` version. With ``restrict`` each labelled image's candidates are its own
labels plus background (refining pseudo-labels); without it every class is a candidate (new images).
Pooled features are read a block of images at a time.
"""

from __future__ import annotations

import numpy as np
from maskbank.flows.keys import code_version, digest
from maskbank.flows.params import RetrieveParams
from maskbank.flows.refs import DatasetRef, VersionRef
from maskbank.flows.stages.bank import load_bank
from maskbank.flows.stages.common import cached_task
from maskbank.flows.stages.labels import LabelVersionWriter, blocks, label_version_ref, pooled_reader, unskipped
from maskbank.storage.layout import POOLED, PREDICTIONS
from maskbank.storage.store import Store
from maskbank.storage.versions import version_exists, version_id
from maskbank.tasks.classes import multi_hot
from maskbank.tasks.models.device import resolve_device
from maskbank.tasks.retrieve import BankIndex, rule_k

KIND = PREDICTIONS
MODULES = ("maskbank.tasks.retrieve", "maskbank.tasks.paint", "maskbank.tasks.coverage", "maskbank.flows.stages.labels",
           __name__)
BLOCK_IMAGES = 256
"""Images whose proposals are read and classified at once."""


@cached_task("retrieve", MODULES)
def retrieve(
    store: str, targets: DatasetRef, bank_version: VersionRef, proposals_key: str, pooled_key: str,
    params: RetrieveParams, restrict: bool = False, skip: list[str] | None = None, device: str = "auto",
) -> VersionRef:
    """Label maps for the target images by retrieval against ``bank_version``.

    The reference carries the version's metrics: what looks wrong in the maps of the targets that have
    image labels (when their class list is the bank's), against those labels."""
    st = Store.open(store, create=False)
    rows = unskipped(targets.labelled_indices() if restrict else range(len(targets.image_keys)),
                     targets.image_keys, skip)
    keys = [targets.image_keys[i] for i in rows]
    vparams = {"retrieve": params.model_dump(), "restrict": restrict, "proposals": proposals_key,
               "pooled": pooled_key, "images": digest(keys)}
    code = code_version(MODULES)
    vid = version_id(KIND, vparams, [bank_version.id], targets.fingerprints, code_version=code)
    if version_exists(st, vid) and not st.label_maps_missing(vid, keys):
        return label_version_ref(st, store, KIND, vid)

    bank = load_bank(st, bank_version.id)
    index = BankIndex(bank, device=resolve_device(device))
    k = rule_k(params.rule, params.k, params.k_per_class)
    allowed = multi_hot([targets.labels[i] for i in rows], bank.num_classes, background=True) if restrict else None
    counts = st.element_counts(POOLED, pooled_key, keys)
    read = pooled_reader(st, pooled_key, keys)
    out = LabelVersionWriter(st, KIND, vid, proposals_key, bank.num_classes, params.nms_iou, bank.class_names)
    same_classes = list(targets.class_names) == list(bank.class_names)
    for block in blocks(len(keys), BLOCK_IMAGES):
        features, _ = read(np.asarray(block))
        owner = np.repeat(np.asarray(block), counts[block.start : block.stop])
        labels, scores = np.zeros(0, np.int32), np.zeros(0, np.float32)
        if len(features):
            labels, scores, _ = index.classify(features, rule=params.rule, k=k,
                                               allowed=None if allowed is None else allowed[owner])
        ends = np.cumsum(counts[block.start : block.stop])
        for j, lo, hi in zip(block, ends - counts[block.start : block.stop], ends):
            out.add(keys[j], targets.image_ids[rows[j]], labels[lo:hi], scores[lo:hi],
                    targets.labels[rows[j]] if same_classes else None)
    out.publish(vparams, [bank_version.id], targets.fingerprints, code)
    return label_version_ref(st, store, KIND, vid)
