"""Mask embeddings of a CLIP image encoder with TUSS's discrimination-bias-aligned last block (DBA-CLIP).

The image, resized so its short side is ``short_side`` and padded to whole patches, runs through CLIP's vision
tower up to its last block. That block is replaced, as in SCLIP and TUSS, by correlative self-attention with
the mask-aware bias of :mod:`maskbank.tasks.mask_attention`::

    A = (softmax(q·qᵀ·s + B) + softmax(k·kᵀ·s + B)) / 2          (s: the head's scale, B: the bias)
    x ← x + residual_weight · out_proj(A · v);  x ← x + mlp(ln2(x))

``B`` is 0 between tokens of a common proposal and ``bias`` between tokens of different ones (the class token
always visible), so each patch's embedding is drawn from its own proposals. Every patch token then goes through
the post-layernorm and the visual projection into the text embeddings' space, and a proposal's embedding is the
soft-pooled, unit-norm mean of the patch embeddings its mask covers (:func:`~maskbank.tasks.pooling.pool_masks`).
TUSS also blends in sliding windows of 224 px; this is its single global forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from maskbank.tasks.embed import normalised_pixels
from maskbank.tasks.geometry import PatchGeometry
from maskbank.tasks.mask_attention import attention_bias, token_membership
from maskbank.tasks.models.device import autocast, resolve_device
from maskbank.tasks.pooling import mask_weights, pool_weights

if TYPE_CHECKING:
    from transformers import CLIPModel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipMaskConfig:
    """Settings of :class:`ClipMaskEmbedder`.

    ``short_side``: the resized image's short side (TUSS: 448). ``bias``: the logit bias between tokens of
    different proposals (TUSS: −4). ``residual_weight``: the attention branch's weight in the last block's
    residual (TUSS's final configurations: 2). ``mean``/``std`` apply to RGB in [0, 1].
    """

    short_side: int = 448
    bias: float = -4.0
    residual_weight: float = 2.0
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    device: str = "auto"
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.short_side < 1:
            raise ValueError(f"short_side must be >= 1, got {self.short_side}")
        if self.bias > 0:
            raise ValueError(f"bias must be <= 0, got {self.bias}")


class ClipMaskEmbedder:
    """One unit embedding per proposal, in the text embeddings' space of a ``transformers`` ``CLIPModel``."""

    def __init__(self, model: CLIPModel, config: ClipMaskConfig | None = None) -> None:
        vision = getattr(model, "vision_model", None)
        if vision is None or not hasattr(vision, "pre_layrnorm") or not hasattr(model, "visual_projection"):
            raise ValueError(f"DBA-CLIP mask embeddings need a CLIP model (a pre-layernorm vision tower and a visual "
                             f"projection), got {type(model).__name__}")
        self.config = config or ClipMaskConfig()
        self.device = resolve_device(self.config.device)
        self.model = model.to(self.device).eval()
        self.patch_size = int(vision.config.patch_size)
        self._mean = torch.tensor(self.config.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.config.std, dtype=torch.float32).view(3, 1, 1)

    def geometry(self, image_hw: tuple[int, int]) -> PatchGeometry:
        h, w = image_hw
        return PatchGeometry.for_image(image_hw, round(self.config.short_side * max(h, w) / min(h, w)), self.patch_size)

    def _pixels(self, image: np.ndarray, geometry: PatchGeometry) -> torch.Tensor:
        return normalised_pixels(image, geometry, self._mean, self._std).to(self.device)

    def patch_embeddings(self, image: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, PatchGeometry]:
        """``float32[Hp, Wp, D]`` projected patch embeddings of ``image`` with ``[N, H, W]`` ``masks`` biasing
        the last block, and the grid's geometry."""
        geometry = self.geometry(image.shape[:2])
        return self._grid(image, geometry, mask_weights(geometry, masks)), geometry

    @torch.no_grad()
    def _grid(self, image: np.ndarray, geometry: PatchGeometry, weights: np.ndarray) -> np.ndarray:
        """The projected patch embeddings, the last block biased by the proposals' ``[N, Hp, Wp]`` cell covers."""
        vision = self.model.vision_model
        with autocast(self.device, self.config.bf16):
            x = vision.embeddings(self._pixels(image, geometry), interpolate_pos_encoding=True)
            x = vision.pre_layrnorm(x)
            for layer in vision.encoder.layers[:-1]:
                out = layer(x, None)
                x = out[0] if isinstance(out, tuple) else out
            n_patch = geometry.grid_hw[0] * geometry.grid_hw[1]
            bias = attention_bias(token_membership(weights), x.shape[1] - n_patch, self.config.bias)
            x = self._last_block(vision.encoder.layers[-1], x, bias.to(self.device, x.dtype))
            x = self.model.visual_projection(vision.post_layernorm(x[:, x.shape[1] - n_patch :]))
        return x[0].float().reshape(*geometry.grid_hw, -1).cpu().numpy()

    def _last_block(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        attn = layer.self_attn
        h = layer.layer_norm1(x)
        b, t, _ = h.shape
        heads = attn.num_heads

        def split(p: torch.nn.Linear) -> torch.Tensor:
            return p(h).view(b, t, heads, -1).transpose(1, 2)

        q, k, v = split(attn.q_proj), split(attn.k_proj), split(attn.v_proj)
        weights = (torch.softmax(q @ q.transpose(-1, -2) * attn.scale + bias, dim=-1)
                   + torch.softmax(k @ k.transpose(-1, -2) * attn.scale + bias, dim=-1)) / 2
        out = (weights @ v).transpose(1, 2).reshape(b, t, -1)
        x = x + self.config.residual_weight * attn.out_proj(out)
        return x + layer.mlp(layer.layer_norm2(x))

    def __call__(self, image: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """``float32[N, D]`` unit embeddings of ``image``'s ``[N, H, W]`` proposal masks (zero rows for empty
        masks)."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError("image must be a uint8[H, W, 3] RGB array")
        geometry = self.geometry(image.shape[:2])
        weights = mask_weights(geometry, masks)
        return pool_weights(self._grid(image, geometry, weights), weights)
