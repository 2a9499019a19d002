"""Stage 3c, clip (with ``seed.method`` 'clip'): one DBA-CLIP embedding per proposal of the labelled images, in
the text embeddings' space, stored as a pooled group of its own key; the seed stage classifies them."""

from __future__ import annotations

import numpy as np

from maskbank.flows import runtime
from maskbank.flows.keys import code_version, stage_key
from maskbank.flows.params import SeedParams
from maskbank.flows.refs import ShardRef
from maskbank.flows.stages.common import ImageJob, cached_task, run_shard
from maskbank.storage.datasets import load_rgb
from maskbank.storage.layout import POOLED, PROPOSALS, SETTINGS_CHECKPOINT, SETTINGS_CODE
from maskbank.storage.store import ImageOutput, Store

MODULES = ("maskbank.tasks.clip_masks", "maskbank.tasks.mask_attention", "maskbank.tasks.pooling",
           "maskbank.tasks.geometry", __name__)


def clip_pooled_settings(proposals_key: str, params: SeedParams) -> dict:
    """What the key of the proposals' CLIP embeddings hashes, as their group records it: the proposals' key,
    the CLIP settings, the checkpoint's content and the code version."""
    return {PROPOSALS: proposals_key,
            "clip": {"model": params.text_model, "attention_bias": params.clip_attention_bias},
            SETTINGS_CHECKPOINT: runtime.checkpoint_id(params.text_model), SETTINGS_CODE: code_version(MODULES)}


def clip_pooled_key(proposals_key: str, params: SeedParams) -> str:
    s = clip_pooled_settings(proposals_key, params)
    return stage_key(POOLED, s["clip"], [s[PROPOSALS], s[SETTINGS_CHECKPOINT]], s[SETTINGS_CODE])


@cached_task("clip", MODULES, task_run_name="clip-{key:.8}")
def clip_shard(store: str, key: str, jobs: list[ImageJob], proposals_key: str, params: SeedParams,
               device: str = "auto") -> ShardRef:
    """Unit CLIP embeddings ``[proposal, dim]`` and area fraction per proposal (no saliency) for a shard."""
    st = Store.open(store, create=False)
    embedder = runtime.clip_embedder(params.text_model, params.clip_attention_bias, device)

    def compute(job: ImageJob) -> ImageOutput:
        props = st.read_proposals(proposals_key, job.key)
        embeddings = embedder(load_rgb(job.path, exif_transpose=job.exif_transpose), props.masks())
        h, w = props.image_hw
        return st.pooled_output(job.key, embeddings, np.full(len(props), np.nan, np.float32),
                                props.area.astype(np.float32) / (h * w), (h, w))

    settings = clip_pooled_settings(proposals_key, params)
    return run_shard(st, POOLED, key, jobs, lambda group: [compute(j) for j in group],
                     lambda outs: st.write_pooled(key, outs, settings=settings))
