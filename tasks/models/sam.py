"""Segment Anything model builders: MobileSAM (``vit_t``) and Meta's ViT-B/L/H, by name.

``vit_t`` runs at any input size that is a multiple of 16 (1024 native, 512 for 4x fewer image tokens).
The ViT-B/L/H encoders learned their absolute position embedding and global relative positions on a
64x64 token grid, so they are built at 1024 only; asking for another size raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from maskbank.tasks.models.tiny_vit import tiny_vit

PROMPT_EMBED_DIM = 256
ENCODER_STRIDE = 16
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
VIT_IMAGE_SIZE = 1024


def assemble_sam(image_encoder: nn.Module, image_size: int) -> Sam:
    """Put SAM's standard prompt encoder and mask decoder behind ``image_encoder``.

    The encoder must map ``[B, 3, image_size, image_size]`` to ``[B, 256, image_size/16, image_size/16]``
    and expose ``img_size == image_size`` (SAM pads and resizes inputs to it).
    """
    if getattr(image_encoder, "img_size", None) != image_size:
        raise ValueError(f"image encoder img_size {getattr(image_encoder, 'img_size', None)} != {image_size}")
    grid = image_size // ENCODER_STRIDE
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=PROMPT_EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


def load_sam_checkpoint(sam: Sam, checkpoint: Path | str | None) -> Sam:
    """Load a SAM state dict (strict) when given, then switch to eval mode with frozen parameters."""
    if checkpoint is not None:
        state_dict = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
        sam.load_state_dict(state_dict, strict=True)
    # eval() after loading: TinyViT caches its attention biases when switched to eval mode.
    sam.eval()
    sam.requires_grad_(False)
    return sam


def build_sam_vit_t(checkpoint: Path | str | None = None, image_size: int = 1024) -> Sam:
    """MobileSAM: TinyViT-5M encoder at ``image_size`` with SAM's prompt encoder and mask decoder."""
    return load_sam_checkpoint(assemble_sam(tiny_vit(img_size=image_size), image_size), checkpoint)


def _meta_vit(arch: str) -> Callable[..., Sam]:
    def build(checkpoint: Path | str | None = None, image_size: int = VIT_IMAGE_SIZE) -> Sam:
        if image_size != VIT_IMAGE_SIZE:
            raise ValueError(
                f"SAM {arch} is built at image_size {VIT_IMAGE_SIZE} only (its position embeddings are "
                f"learned on a 64x64 token grid); got {image_size}. Use 'vit_t' for smaller inputs."
            )
        return load_sam_checkpoint(sam_model_registry[arch](checkpoint=None), checkpoint)

    build.__name__ = f"build_sam_{arch}"
    build.__doc__ = f"Meta's SAM {arch} at image_size 1024."
    return build


SAM_BUILDERS: dict[str, Callable[..., Sam]] = {
    "vit_t": build_sam_vit_t,
    "vit_b": _meta_vit("vit_b"),
    "vit_l": _meta_vit("vit_l"),
    "vit_h": _meta_vit("vit_h"),
}


def build_sam(arch: str, checkpoint: Path | str | None = None, image_size: int = 1024) -> Sam:
    """Build the SAM named ``arch`` (a key of :data:`SAM_BUILDERS`) at ``image_size``, loading ``checkpoint``."""
    if arch not in SAM_BUILDERS:
        raise ValueError(f"unknown SAM arch {arch!r}; known: {sorted(SAM_BUILDERS)}")
    return SAM_BUILDERS[arch](checkpoint=checkpoint, image_size=image_size)
