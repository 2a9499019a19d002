"""Stage 3b, pool: one soft-pooled feature (and mean saliency) per proposal, the input of seeding and retrieval."""

from __future__ import annotations

import numpy as np

from maskbank.flows.keys import code_version, stage_key
from maskbank.flows.refs import ShardRef
from maskbank.flows.stages.common import ImageJob, cached_task, run_shard
from maskbank.storage.layout import FEATURES, POOLED, PROPOSALS, SETTINGS_CODE
from maskbank.storage.store import ImageOutput, Store, feature_geometry
from maskbank.tasks.pooling import mask_means, pool_masks, saliency_at_image

MODULES = ("maskbank.tasks.pooling", "maskbank.tasks.geometry", __name__)


def pooled_settings(proposals_key: str, features_key: str) -> dict:
    """What the key of the features pooled from these proposals and features hashes, as their group
    records it: the two keys and the code version."""
    return {PROPOSALS: proposals_key, FEATURES: features_key, SETTINGS_CODE: code_version(MODULES)}


def pooled_key(proposals_key: str, features_key: str) -> str:
    s = pooled_settings(proposals_key, features_key)
    return stage_key(POOLED, {}, [s[PROPOSALS], s[FEATURES]], s[SETTINGS_CODE])


@cached_task("pool", MODULES, task_run_name="pool-{key:.8}")
def pool_shard(store: str, key: str, jobs: list[ImageJob], proposals_key: str, features_key: str) -> ShardRef:
    """Pooled proposal features ``[mask, channel]``, mean saliency and area fraction per proposal."""
    st = Store.open(store, create=False)

    def compute(job: ImageJob) -> ImageOutput:
        props = st.read_proposals(proposals_key, job.key)
        out = st.read_image(FEATURES, features_key, job.key).arrays
        features, geometry = out["features"], feature_geometry(out)
        masks = props.masks()
        pooled = pool_masks(features, geometry, masks)
        if "saliency" in out:
            saliency = mask_means(saliency_at_image(out["saliency"], props.image_hw), masks)
        else:
            saliency = np.full(len(masks), np.nan, np.float32)
        h, w = props.image_hw
        return st.pooled_output(job.key, pooled, saliency, props.area.astype(np.float32) / (h * w), (h, w))

    settings = pooled_settings(proposals_key, features_key)
    return run_shard(st, POOLED, key, jobs, lambda group: [compute(j) for j in group],
                     lambda outs: st.write_pooled(key, outs, settings=settings))
