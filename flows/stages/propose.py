"""Stage 2, propose: Segment Anything masks per image, made non-overlapping, stored as RLE."""

from __future__ import annotations

from maskbank.flows import runtime
from maskbank.flows.keys import code_version, stage_key
from maskbank.flows.params import ProposeParams
from maskbank.flows.refs import ShardRef
from maskbank.flows.stages.common import ImageJob, cached_task, run_shard
from maskbank.storage.datasets import load_rgb
from maskbank.storage.layout import PROPOSALS, SETTINGS_CHECKPOINT, SETTINGS_CODE
from maskbank.storage.store import ImageOutput, Store
from maskbank.tasks.models.device import images_per_batch
from maskbank.tasks.propose import non_overlapping

MODULES = ("maskbank.tasks.propose", "maskbank.tasks.proposals", "maskbank.tasks.fast_amg",
           "maskbank.tasks.point_decoder", "maskbank.tasks.models.sam", "maskbank.tasks.models.tiny_vit",
           "maskbank.tasks.rle", __name__)


def proposals_settings(params: ProposeParams) -> dict:
    """What the key of the proposals made with ``params`` hashes, as their group records it: the parameters,
    the checkpoint's content and the code version."""
    return {"propose": params.model_dump(mode="json"), SETTINGS_CHECKPOINT: runtime.checkpoint_id(params.model),
            SETTINGS_CODE: code_version(MODULES)}


def proposals_key(params: ProposeParams) -> str:
    """Key of the proposals made with ``params`` (the checkpoint's content included)."""
    s = proposals_settings(params)
    return stage_key(PROPOSALS, s["propose"], [s[SETTINGS_CHECKPOINT]], s[SETTINGS_CODE])


@cached_task("propose", MODULES, task_run_name="propose-{key:.8}")
def propose_shard(
    store: str, key: str, jobs: list[ImageJob], params: ProposeParams, device: str = "auto", batch: int | None = None,
) -> ShardRef:
    """Proposals for a shard of images, ``batch`` images per encoder pass (unset: the device's default);
    images already stored under ``key`` are not recomputed."""
    st = Store.open(store, create=False)
    model = runtime.proposer(params, device)

    def compute(group: list[ImageJob]) -> list[ImageOutput]:
        images = [load_rgb(job.path, exif_transpose=job.exif_transpose) for job in group]
        outputs = []
        for job, image, props in zip(group, images, model.batch(images)):
            props = non_overlapping(props, model.config.min_area_pixels(image.shape[:2]))
            outputs.append(st.proposals_output(job.key, props.rles, props.predicted_iou, props.stability_score,
                                               props.bbox, props.area, props.image_hw))
        return outputs

    settings = proposals_settings(params)
    return run_shard(st, PROPOSALS, key, jobs, compute, lambda outs: st.write_proposals(key, outs, settings=settings),
                     images_per_batch(model.device, batch))
