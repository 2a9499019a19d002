"""Stage 2, propose: Segment Anything masks per image, made non-overlapping, stored as RLE: from a grid of point
prompts (``propose.method`` 'automatic'), or in the boxes a detector finds for the class names ('boxes'), each
mask with its box's class and score."""

from __future__ import annotations

import numpy as np

from maskbank.flows import runtime
from maskbank.flows.keys import code_version, stage_key
from maskbank.flows.params import ProposeParams
from maskbank.flows.refs import ShardRef
from maskbank.flows.stages.common import ImageJob, cached_task, run_shard
from maskbank.storage.datasets import load_rgb
from maskbank.storage.layout import PROPOSALS, SETTINGS_CHECKPOINT, SETTINGS_CLASSES, SETTINGS_CODE
from maskbank.storage.store import ImageOutput, Store
from maskbank.tasks.models.device import images_per_batch
from maskbank.tasks.proposals import REST
from maskbank.tasks.propose import non_overlapping

MODULES = ("maskbank.tasks.propose", "maskbank.tasks.proposals", "maskbank.tasks.fast_amg",
           "maskbank.tasks.point_decoder", "maskbank.tasks.models.sam", "maskbank.tasks.models.tiny_vit",
           "maskbank.tasks.rle", "maskbank.tasks.detect", __name__)


def detector_vocabulary(params: ProposeParams, class_names: list[str], background: bool) -> dict:
    """The keyword arguments of :func:`proposals_key` and :func:`propose_shard` that say what the detector is
    asked for: the collection's class names and whether they have a background, with method 'boxes'; none
    with method 'automatic', whose proposals do not depend on the classes."""
    return {"classes": list(class_names), "background": bool(background)} if params.method == "boxes" else {}


def proposals_settings(params: ProposeParams, classes: list[str] | None = None, background: bool = True) -> dict:
    """What the key of the proposals made with ``params`` hashes, as their group records it: the settings that
    act, the checkpoint's content (with method 'boxes', the detector's too, and the class names asked for,
    ``classes[1:]``, and whether the classes have a background) and the code version."""
    s = {"propose": params.acting(), SETTINGS_CHECKPOINT: runtime.checkpoint_id(params.model),
         SETTINGS_CODE: code_version(MODULES)}
    if params.method == "boxes":
        if len(classes or ()) < 2:
            raise ValueError("propose.method 'boxes' asks the detector for the class names: give them")
        s[SETTINGS_CHECKPOINT] = [s[SETTINGS_CHECKPOINT], runtime.checkpoint_id(params.detector)]
        s[SETTINGS_CLASSES] = {"names": list(classes), "background": bool(background)}
    return s


def proposals_key(params: ProposeParams, classes: list[str] | None = None, background: bool = True) -> str:
    """Key of the proposals made with ``params`` (the checkpoints' content included; with method 'boxes', of the
    class names ``classes`` and whether they have a background)."""
    s = proposals_settings(params, classes, background)
    upstream = [s[SETTINGS_CHECKPOINT], *([s[SETTINGS_CLASSES]] if SETTINGS_CLASSES in s else [])]
    return stage_key(PROPOSALS, s["propose"], upstream, s[SETTINGS_CODE])


@cached_task("propose", MODULES, task_run_name="propose-{key:.8}")
def propose_shard(
    store: str, key: str, jobs: list[ImageJob], params: ProposeParams, device: str = "auto", batch: int | None = None,
    classes: list[str] | None = None, background: bool = True,
) -> ShardRef:
    """Proposals for a shard of images, ``batch`` images per encoder pass (unset: the device's default; with
    method 'boxes', one image at a time, asking for ``classes[1:]``); images already stored under ``key`` are
    not recomputed."""
    st = Store.open(store, create=False)
    settings = proposals_settings(params, classes, background)
    if params.method == "boxes":
        return _box_shard(st, key, jobs, params, classes, background, device, settings)
    model = runtime.proposer(params, device)

    def compute(group: list[ImageJob]) -> list[ImageOutput]:
        images = [load_rgb(job.path, exif_transpose=job.exif_transpose) for job in group]
        outputs = []
        for job, image, props in zip(group, images, model.batch(images)):
            props = non_overlapping(props, model.config.min_area_pixels(image.shape[:2]))
            outputs.append(st.proposals_output(job.key, props.rles, props.predicted_iou, props.stability_score,
                                               props.bbox, props.area, props.image_hw))
        return outputs

    return run_shard(st, PROPOSALS, key, jobs, compute, lambda outs: st.write_proposals(key, outs, settings=settings),
                     images_per_batch(model.device, batch))


def _box_shard(st: Store, key: str, jobs: list[ImageJob], params: ProposeParams, classes: list[str], background: bool,
               device: str, settings: dict) -> ShardRef:
    """Proposals from the detector's boxes for ``classes[1:]``; a mask's stored ``box_class`` is its class's
    position in ``classes`` (:data:`REST`: the rest region, made where the classes have a background)."""
    model = runtime.box_proposer(params, background, device)

    def compute(job: ImageJob) -> ImageOutput:
        props = model(load_rgb(job.path, exif_transpose=job.exif_transpose), classes[1:])
        box_class = np.where(props.box_class == REST, REST, props.box_class + 1)  # positions in classes[1:] -> classes
        return st.proposals_output(job.key, props.rles, props.predicted_iou, props.stability_score, props.bbox,
                                   props.area, props.image_hw, box_class=box_class, box_score=props.box_score)

    return run_shard(st, PROPOSALS, key, jobs, lambda group: [compute(j) for j in group],
                     lambda outs: st.write_proposals(key, outs, settings=settings))
