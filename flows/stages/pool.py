"""Stage 3b, pool: one soft-pooled feature (and mean saliency) per proposal, the input of seeding and retrieval."""

from __future__ import annotations

import numpy as np

from maskbank.flows import runtime
from maskbank.flows.keys import code_version, stage_key
from maskbank.flows.params import EmbedParams, PoolParams
from maskbank.flows.refs import ShardRef
from maskbank.flows.stages.common import ImageJob, cached_task, run_shard
from maskbank.flows.stages.embed import features_settings
from maskbank.storage.datasets import load_rgb
from maskbank.storage.layout import FEATURES, POOLED, PROPOSALS, SETTINGS_CODE
from maskbank.storage.store import ImageOutput, Store, feature_geometry
from maskbank.tasks.mask_attention import check_backbone, masked_features
from maskbank.tasks.pooling import mask_means, mask_weights, pool_weights, saliency_at_image

MODULES = ("maskbank.tasks.pooling", "maskbank.tasks.geometry", "maskbank.tasks.mask_attention", __name__)


def pooled_settings(proposals_key: str, features_key: str, params: PoolParams) -> dict:
    """What the key of the features pooled from these proposals and features with ``params`` hashes, as their
    group records it: the two keys, the parameters and the code version."""
    return {PROPOSALS: proposals_key, FEATURES: features_key, "pool": params.model_dump(mode="json"),
            SETTINGS_CODE: code_version(MODULES)}


def pooled_key(proposals_key: str, features_key: str, params: PoolParams) -> str:
    s = pooled_settings(proposals_key, features_key, params)
    return stage_key(POOLED, s["pool"], [s[PROPOSALS], s[FEATURES]], s[SETTINGS_CODE])


@cached_task("pool", MODULES, task_run_name="pool-{key:.8}")
def pool_shard(store: str, key: str, jobs: list[ImageJob], proposals_key: str, features_key: str,
               params: PoolParams, embed: EmbedParams, device: str = "auto") -> ShardRef:
    """Pooled proposal features ``[mask, channel]``, mean saliency and area fraction per proposal. With
    ``params.mask_attention`` the features are made again from the image by ``embed``'s backbone (the one
    ``features_key`` was made with), the proposals biasing the attention of its feature block."""
    st = Store.open(store, create=False)
    fx = None
    if params.mask_attention:
        recorded = st.stage_settings(FEATURES, features_key)
        if recorded is not None and recorded != features_settings(embed):
            raise ValueError(f"the features {features_key} were made with other embed parameters than {embed}")
        fx = runtime.extractor(embed, device)
        check_backbone(fx)

    def compute(job: ImageJob) -> ImageOutput:
        props = st.read_proposals(proposals_key, job.key)
        out = st.read_image(FEATURES, features_key, job.key).arrays
        features, geometry = out["features"], feature_geometry(out)
        masks = props.masks()
        weights = mask_weights(geometry, masks)
        if fx is not None and len(masks):
            image = load_rgb(job.path, exif_transpose=job.exif_transpose)
            features = masked_features(fx, image, weights, params.attention_bias)
        pooled = pool_weights(features, weights)
        if "saliency" in out:
            saliency = mask_means(saliency_at_image(out["saliency"], props.image_hw), masks)
        else:
            saliency = np.full(len(masks), np.nan, np.float32)
        h, w = props.image_hw
        return st.pooled_output(job.key, pooled, saliency, props.area.astype(np.float32) / (h * w), (h, w))

    settings = pooled_settings(proposals_key, features_key, params)
    return run_shard(st, POOLED, key, jobs, lambda group: [compute(j) for j in group],
                     lambda outs: st.write_pooled(key, outs, settings=settings))
