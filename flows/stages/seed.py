"""Stage 4, seed: the pseudo-labels of the labelled images (the main job's output), from image labels,
proposals and features alone. Published as a ``pseudo_labels`` version."""

from __future__ import annotations

import numpy as np

from maskbank.flows.params import SeedParams
from maskbank.flows.refs import DatasetRef, VersionRef
from maskbank.flows.stages.common import cached_task
from maskbank.flows.keys import code_version, digest
from maskbank.storage.layout import POOLED, PSEUDO_LABELS
from maskbank.storage.store import Store
from maskbank.storage.versions import publish_version, version_exists, version_id
from maskbank.tasks.paint import paint_by_score
from maskbank.tasks.models.device import resolve_device
from maskbank.tasks.seed import seed_proposals

KIND = PSEUDO_LABELS
MODULES = ("maskbank.tasks.seed", "maskbank.tasks.paint", __name__)


def load_pooled(store: Store, pooled_key: str, image_keys: list[str]):
    """Concatenated pooled features, saliency and the proposal -> image index over ``image_keys``."""
    arrays, index = store.read_elements(POOLED, pooled_key, image_keys, ["features", "saliency"])
    return arrays["features"], arrays["saliency"], index


@cached_task("seed", MODULES)
def seed_collection(
    store: str, collection: DatasetRef, proposals_key: str, pooled_key: str, params: SeedParams,
    skip: list[str] | None = None, device: str = "auto",
) -> VersionRef:
    """Seed every labelled image's proposals with one of its labels or background; paint the label maps."""
    st = Store.open(store, create=False)
    rows = [i for i in collection.labelled_indices() if collection.image_keys[i] not in set(skip or ())]
    keys = [collection.image_keys[i] for i in rows]
    vparams = {"seed": params.model_dump(), "proposals": proposals_key, "pooled": pooled_key, "images": digest(keys)}
    code = code_version(MODULES)
    vid = version_id(KIND, vparams, datasets=collection.fingerprints, code_version=code)
    if version_exists(st, vid) and not st.label_maps_missing(vid, keys):
        return VersionRef(store=store, id=vid, kind=KIND)

    k = len(collection.class_names)
    multi_hot = np.zeros((len(rows), k), bool)
    for j, i in enumerate(rows):
        multi_hot[j, collection.labels[i]] = True
    features, saliency, index = load_pooled(st, pooled_key, keys)
    use_sal = params.saliency_weight > 0 and len(saliency) and not np.isnan(saliency).any()
    config = params.config()
    result = seed_proposals(features, index, multi_hot, saliency=saliency if use_sal else None, config=config,
                            device=resolve_device(device))
    chosen = np.take_along_axis(result.scores, result.labels[:, None].astype(np.int64), 1)[:, 0] if len(index) else np.zeros(0)
    with st.label_map_writer(vid) as maps:
        for j, i in enumerate(rows):
            sel = index == j
            props = st.read_proposals(proposals_key, keys[j])
            label_map = paint_by_score(props.masks(), result.labels[sel], chosen[sel], nms_iou=None, num_classes=k)
            maps.add(keys[j], label_map, collection.image_ids[i])
    arrays = {"image_key": np.array(keys), "proposal_image": index.astype(np.int32),
              "proposal_label": result.labels, "proposal_score": chosen.astype(np.float32)}
    dims = {"image_key": ("image",), "proposal_image": ("proposal",), "proposal_label": ("proposal",),
            "proposal_score": ("proposal",)}
    info = publish_version(st, KIND, vparams, datasets=collection.fingerprints, code_version=code, arrays=arrays,
                           dims=dims)
    assert info.id == vid
    return VersionRef(store=store, id=vid, kind=KIND)
