"""Models a worker process loads once and reuses across tasks."""

from __future__ import annotations

from functools import lru_cache

from maskbank.flows.params import EmbedParams, ProposeParams
from maskbank.storage.weights import fetch, get_checkpoint
from maskbank.tasks.embed import EmbedConfig, FeatureExtractor
from maskbank.tasks.models.backbone import load_backbone
from maskbank.tasks.models.saliency import SALIENCY_HEAD_FILE, load_saliency_head
from maskbank.tasks.models.sam import build_sam
from maskbank.tasks.propose import MaskProposer, ProposerConfig


def checkpoint_id(name: str) -> str:
    """What pins a checkpoint's content (its sha256, or its name and revision when only that is known)."""
    ckpt = get_checkpoint(name)
    return ckpt.sha256 or f"{ckpt.name}@{getattr(ckpt, 'revision', None)}"


def proposer_config(params: ProposeParams, device: str = "auto") -> ProposerConfig:
    return ProposerConfig(
        input_size=params.input_size, points_per_side=params.points_per_side,
        points_per_batch=params.points_per_batch, pred_iou_thresh=params.pred_iou_thresh,
        stability_score_thresh=params.stability_score_thresh, box_nms_thresh=params.box_nms_thresh,
        bf16=params.bf16, device=device, min_area=params.min_area, generator=params.generator,
    )


@lru_cache(maxsize=2)
def proposer(params: ProposeParams, device: str = "auto") -> MaskProposer:
    """The mask proposer for ``params`` (weights fetched into the cache on first use)."""
    ckpt = get_checkpoint(params.model)
    sam = build_sam(ckpt.role, fetch(params.model), image_size=params.input_size)
    return MaskProposer(sam, proposer_config(params, device))


@lru_cache(maxsize=2)
def extractor(params: EmbedParams, device: str = "auto") -> FeatureExtractor:
    """The feature extractor for ``params``, with the checkpoint's saliency head when asked and present."""
    folder = fetch(params.model)
    head = None
    if params.saliency and (folder / SALIENCY_HEAD_FILE).is_file():
        head = load_saliency_head(folder)
    config = EmbedConfig(layer=params.layer, long_side=params.long_side, device=device)
    return FeatureExtractor(load_backbone(folder), config, saliency_head=head)
