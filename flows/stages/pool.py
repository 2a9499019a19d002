"""Stage 3b, pool: one soft-pooled feature (and mean saliency) per proposal, the input of seeding and retrieval."""

from __future__ import annotations

import numpy as np

from maskbank.flows.keys import code_version, stage_key
from maskbank.flows.refs import ShardRef
from maskbank.flows.stages.common import ImageJob, cached_task, run_shard
from maskbank.flows.stages.embed import SALIENCY
from maskbank.storage.store import Store
from maskbank.tasks.pooling import pool_masks

POOLED = "pooled"
MODULES = ("maskbank.tasks.pooling", "maskbank.tasks.geometry", __name__)


def pooled_key(proposals_key: str, features_key: str) -> str:
    return stage_key(POOLED, {}, [proposals_key, features_key], code_version(MODULES))


def mask_means(values: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Mean of an ``[H, W]`` map inside each of ``[N, H, W]`` masks (0 for empty masks)."""
    if len(masks) == 0:
        return np.zeros(0, np.float32)
    flat = masks.reshape(len(masks), -1)
    sums = flat @ values.reshape(-1).astype(np.float64)
    return (sums / np.maximum(flat.sum(1), 1)).astype(np.float32)


def saliency_at_image(saliency: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """A saliency map stored at the backbone's resized resolution, resampled to the image."""
    import cv2

    return cv2.resize(saliency.astype(np.float32), (image_hw[1], image_hw[0]), interpolation=cv2.INTER_LINEAR)


@cached_task("pool", MODULES, task_run_name="pool-{key:.8}")
def pool_shard(store: str, key: str, jobs: list[ImageJob], proposals_key: str, features_key: str) -> ShardRef:
    """Pooled proposal features ``[mask, channel]``, mean saliency and area fraction per proposal."""
    st = Store.open(store, create=False)

    def compute(job: ImageJob) -> None:
        props = st.read_proposals(proposals_key, job.key)
        features, geometry = st.read_features(features_key, job.key)
        masks = props.masks()
        pooled = pool_masks(features, geometry, masks)
        if st.has_item(SALIENCY, features_key, job.key):
            sal_map = st.read_image_item(SALIENCY, features_key, job.key).arrays["saliency"]
            saliency = mask_means(saliency_at_image(sal_map, props.image_hw), masks)
        else:
            saliency = np.full(len(masks), np.nan, np.float32)
        h, w = props.image_hw
        arrays = {"features": pooled, "saliency": saliency, "area": props.area.astype(np.float32) / (h * w)}
        dims = {"features": ("mask", "channel"), "saliency": ("mask",), "area": ("mask",)}
        st.write_image_item(POOLED, key, job.key, arrays, {"image_hw": [h, w]}, dims)

    return run_shard(st, POOLED, key, jobs, compute)
