"""MobileSAM's TinyViT image encoder, made to work at any square input size.

``mobile_sam.modeling.TinyViT.forward_features`` reshapes its last stage to a fixed 64x64 token grid,
which only fits a 1024 input. :class:`TinyViT` reads the grid from the model's own geometry
(``img_size // 16``), so the same weights run at 1024 (native) or 512 (4x fewer tokens).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

with warnings.catch_warnings():
    # mobile_sam imports deprecated timm paths and re-registers timm's tiny_vit names on import.
    warnings.simplefilter("ignore")
    from mobile_sam.modeling.tiny_vit_sam import TinyViT as _TinyViT

# TinyViT's last patch merging keeps the stride (16) only for these widths; others halve the grid again.
_STRIDE_16_WIDTHS = (320, 448, 576)


class TinyViT(_TinyViT):
    """TinyViT whose output grid follows ``img_size`` (``[B, 256, img_size/16, img_size/16]``)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        h, w = self.layers[-1].input_resolution
        x = x.view(x.shape[0], h, w, x.shape[-1]).permute(0, 3, 1, 2)
        return self.neck(x)


def tiny_vit(
    img_size: int = 1024,
    embed_dims: Sequence[int] = (64, 128, 160, 320),
    depths: Sequence[int] = (2, 2, 6, 2),
    num_heads: Sequence[int] = (2, 4, 5, 10),
    window_sizes: Sequence[int] = (7, 7, 14, 7),
) -> TinyViT:
    """Build a TinyViT encoder; the defaults are MobileSAM's TinyViT-5M (``vit_t``)."""
    if img_size < 16 or img_size % 16:
        raise ValueError(f"TinyViT img_size must be a positive multiple of 16, got {img_size}")
    if embed_dims[-1] not in _STRIDE_16_WIDTHS:
        raise ValueError(f"TinyViT last embed dim must be one of {_STRIDE_16_WIDTHS}, got {embed_dims[-1]}")
    return TinyViT(
        img_size=img_size,
        in_chans=3,
        num_classes=1000,
        embed_dims=list(embed_dims),
        depths=list(depths),
        num_heads=list(num_heads),
        window_sizes=list(window_sizes),
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )
