"""Stage 3, embed: dense patch features (and the foreground-saliency map) per image."""

from __future__ import annotations

from maskbank.flows import runtime
from maskbank.flows.keys import code_version, stage_key
from maskbank.flows.params import EmbedParams
from maskbank.flows.refs import ShardRef
from maskbank.flows.stages.common import ImageJob, cached_task, run_shard
from maskbank.storage.datasets import load_rgb
from maskbank.storage.layout import FEATURES, SETTINGS_CHECKPOINT, SETTINGS_CODE
from maskbank.storage.store import ImageOutput, Store
from maskbank.tasks.models.device import images_per_batch

MODULES = ("maskbank.tasks.embed", "maskbank.tasks.geometry", "maskbank.tasks.models.backbone",
           "maskbank.tasks.models.saliency", __name__)


def features_settings(params: EmbedParams) -> dict:
    """What the key of the features made with ``params`` hashes, as their group records it: the parameters,
    the checkpoint's content and the code version."""
    return {"embed": params.model_dump(mode="json"), SETTINGS_CHECKPOINT: runtime.checkpoint_id(params.model),
            SETTINGS_CODE: code_version(MODULES)}


def features_key(params: EmbedParams) -> str:
    """Key of the features made with ``params`` (the checkpoint's content included)."""
    s = features_settings(params)
    return stage_key(FEATURES, s["embed"], [s[SETTINGS_CHECKPOINT]], s[SETTINGS_CODE])


@cached_task("embed", MODULES, task_run_name="embed-{key:.8}")
def embed_shard(
    store: str, key: str, jobs: list[ImageJob], params: EmbedParams, device: str = "auto", batch: int | None = None,
) -> ShardRef:
    """Feature grids (and, when the backbone has a head, saliency maps) for a shard of images, ``batch``
    images per forward pass (unset: the device's default)."""
    st = Store.open(store, create=False)
    fx = runtime.extractor(params, device)

    def compute(group: list[ImageJob]) -> list[ImageOutput]:
        grids = fx.batch([load_rgb(job.path, exif_transpose=job.exif_transpose) for job in group])
        return [st.features_output(job.key, g.features, g.geometry, g.saliency) for job, g in zip(group, grids)]

    settings = features_settings(params)
    return run_shard(st, FEATURES, key, jobs, compute, lambda outs: st.write_features(key, outs, settings=settings),
                     images_per_batch(fx.device, batch))
