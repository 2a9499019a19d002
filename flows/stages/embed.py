"""Stage 3, embed: dense patch features (and the foreground-saliency map) per image."""

from __future__ import annotations

from maskbank.flows import runtime
from maskbank.flows.keys import code_version, stage_key
from maskbank.flows.params import EmbedParams
from maskbank.flows.refs import ShardRef
from maskbank.flows.stages.common import ImageJob, cached_task, run_shard
from maskbank.storage.datasets import load_rgb
from maskbank.storage.store import FEATURES, Store

SALIENCY = "saliency"
MODULES = ("maskbank.tasks.embed", "maskbank.tasks.geometry", "maskbank.tasks.models.backbone",
           "maskbank.tasks.models.saliency", __name__)


def features_key(params: EmbedParams) -> str:
    return stage_key(FEATURES, params, [runtime.checkpoint_id(params.model)], code_version(MODULES))


@cached_task("embed", MODULES, task_run_name="embed-{key:.8}")
def embed_shard(store: str, key: str, jobs: list[ImageJob], params: EmbedParams, device: str = "auto") -> ShardRef:
    """Feature grids for a shard of images. The saliency map (when the backbone has a head) is written
    before the features, so a complete features item implies its saliency item."""
    st = Store.open(store, create=False)
    fx = runtime.extractor(params, device)

    def compute(job: ImageJob) -> None:
        grid = fx(load_rgb(job.path, exif_transpose=job.exif_transpose))
        if grid.saliency is not None:
            st.write_image_item(SALIENCY, key, job.key, {"saliency": grid.saliency}, dims={"saliency": ("y", "x")})
        st.write_features(key, job.key, grid.features, grid.geometry, attrs={"path": job.path})

    return run_shard(st, FEATURES, key, jobs, compute)
