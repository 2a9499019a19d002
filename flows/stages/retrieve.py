"""Stage 6, retrieve: label each image's proposals by k-NN over the prototype bank and paint them.

Published as a ``predictions`` version. With ``restrict`` each labelled image's candidates are its own
labels plus background (refining pseudo-labels); without it every class is a candidate (new images).
"""

from __future__ import annotations

import numpy as np

from maskbank.flows.keys import code_version, digest
from maskbank.flows.params import RetrieveParams
from maskbank.flows.refs import DatasetRef, VersionRef
from maskbank.flows.stages.bank import load_bank
from maskbank.flows.stages.common import cached_task
from maskbank.storage.layout import PREDICTIONS
from maskbank.storage.store import Store
from maskbank.storage.versions import publish_version, version_exists, version_id
from maskbank.tasks.paint import paint_by_score
from maskbank.tasks.retrieve import BankIndex

KIND = PREDICTIONS
MODULES = ("maskbank.tasks.retrieve", "maskbank.tasks.paint", __name__)


@cached_task("retrieve", MODULES)
def retrieve(
    store: str, targets: DatasetRef, bank_version: VersionRef, proposals_key: str, pooled_key: str,
    params: RetrieveParams, restrict: bool = False, skip: list[str] | None = None, device: str = "auto",
) -> VersionRef:
    """Label maps for the target images by retrieval against ``bank_version``."""
    st = Store.open(store, create=False)
    rows = [i for i in range(len(targets.image_keys)) if targets.image_keys[i] not in set(skip or ())]
    if restrict:
        rows = [i for i in rows if targets.labels[i] is not None]
    keys = [targets.image_keys[i] for i in rows]
    vparams = {"retrieve": params.model_dump(), "restrict": restrict, "proposals": proposals_key,
               "pooled": pooled_key, "images": digest(keys)}
    code = code_version(MODULES)
    vid = version_id(KIND, vparams, [bank_version.id], targets.fingerprints, code_version=code)
    if version_exists(st, vid) and not st.label_maps_missing(vid, keys):
        return VersionRef(store=store, id=vid, kind=KIND)

    bank = load_bank(st, bank_version.id)
    index = BankIndex(bank, device=device)
    k = params.k if params.rule != "class_balanced" else params.k_per_class
    n_cls = bank.num_classes
    all_labels, all_scores, all_images = [], [], []
    maps = st.label_map_writer(vid)
    for j, i in enumerate(rows):
        pooled = st.read_pooled(pooled_key, keys[j])["features"]
        allowed = None
        if restrict:
            allowed = np.zeros((len(pooled), n_cls), bool)
            allowed[:, [0, *targets.labels[i]]] = True
        if len(pooled):
            labels, scores, _ = index.classify(pooled, rule=params.rule, k=k, allowed=allowed)
        else:
            labels, scores = np.zeros(0, np.int32), np.zeros(0, np.float32)
        props = st.read_proposals(proposals_key, keys[j])
        label_map = paint_by_score(props.masks(), labels, scores, nms_iou=params.nms_iou, num_classes=n_cls)
        maps.add(keys[j], label_map, targets.image_ids[i])
        all_labels.append(labels)
        all_scores.append(scores)
        all_images.append(np.full(len(labels), j, np.int32))
    maps.flush()
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    arrays = {"image_key": np.array(keys), "proposal_image": cat(all_images, np.int32),
              "proposal_label": cat(all_labels, np.int32), "proposal_score": cat(all_scores, np.float32)}
    dims = {"image_key": ("image",), "proposal_image": ("proposal",), "proposal_label": ("proposal",),
            "proposal_score": ("proposal",)}
    publish_version(st, KIND, vparams, [bank_version.id], targets.fingerprints, code_version=code, arrays=arrays,
                    dims=dims)
    return VersionRef(store=store, id=vid, kind=KIND)
