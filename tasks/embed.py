"""Dense patch features: one backbone hidden layer as a ``[Hp, Wp, C]`` grid over the image.

The image is resized (aspect kept) so its long side is ``long_side``, normalised, and zero-padded at the
bottom and right to whole patches. The padding is 0 in normalised space, i.e. the normalisation mean
colour, the most neutral input for the backbone. :class:`~maskbank.tasks.geometry.PatchGeometry` maps
tokens back to image pixels.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from maskbank.tasks.geometry import PatchGeometry
from maskbank.tasks.models.device import autocast, resolve_device

# Annotations only: transformers takes seconds to import, and `maskbank run --help` imports this module
# (for the run parameters' defaults).
if TYPE_CHECKING:
    from transformers import PreTrainedModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EmbedConfig:
    """Settings of :class:`FeatureExtractor`.

    ``layer`` indexes the model's ``hidden_states`` (0 is the embedding output, ``i`` the output of
    block ``i``, negative counts from the end); block 10 of 12 gives DINOv2-S's best patch features.
    ``mean``/``std`` apply to RGB in [0, 1].
    """

    layer: int = 10
    long_side: int = 448
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    device: str = "auto"
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.long_side < 1:
            raise ValueError(f"long_side must be >= 1, got {self.long_side}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values each, std positive")


@dataclass
class FeatureGrid:
    """Patch features of one image, ``float16[Hp, Wp, C]``, and where the grid lies on the image."""

    features: np.ndarray
    geometry: PatchGeometry
    saliency: np.ndarray | None = None
    """Foreground probability ``float16[rh, rw]`` at ``geometry.resized_hw``, when a saliency head ran."""

    def __post_init__(self) -> None:
        if self.features.shape[:2] != self.geometry.grid_hw:
            raise ValueError(f"features grid {self.features.shape[:2]} != geometry grid {self.geometry.grid_hw}")


def normalised_pixels(image: np.ndarray, geometry: PatchGeometry, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``uint8[H, W, 3]`` ``image`` resized to ``geometry.resized_hw`` (area when shrinking, bilinear when
    enlarging), scaled to [0, 1], normalised by ``[3, 1, 1]`` ``mean`` and ``std`` and zero-padded at the bottom
    and right to ``geometry.padded_hw``: ``[1, 3, Hp*P, Wp*P]`` float32."""
    rh, rw = geometry.resized_hw
    shrink = rh * rw < image.shape[0] * image.shape[1]
    resized = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    x = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float().div_(255.0)
    x = (x - mean) / std
    ph, pw = geometry.padded_hw
    return torch.nn.functional.pad(x, (0, pw - rw, 0, ph - rh))[None]


class FeatureExtractor:
    """Runs a ViT backbone (``transformers``, e.g. ``Dinov2Model``) on ``uint8[H, W, 3]`` RGB images, one at a
    time or in batches (:meth:`batch`: images whose token grids are equal share a forward pass).

    Prefix tokens (CLS and any registers) are dropped: the patch tokens are the last ``Hp * Wp`` of the
    sequence. Position embeddings are interpolated to the padded size. With a ``saliency_head`` (e.g.
    ``maskbank.tasks.models.saliency.SaliencyHead``) the grid also carries the foreground-saliency map computed
    from the final patch tokens of the same forward pass.
    """

    def __init__(
        self, model: PreTrainedModel, config: EmbedConfig | None = None, saliency_head: torch.nn.Module | None = None
    ) -> None:
        self.config = config or EmbedConfig()
        self.saliency_head = None if saliency_head is None else saliency_head.to(resolve_device(self.config.device)).eval()
        self.device = resolve_device(self.config.device)
        self.model = model.to(self.device).eval()
        patch_size = model.config.patch_size
        self.patch_size = int(patch_size if isinstance(patch_size, int) else patch_size[0])
        n_hidden = model.config.num_hidden_layers + 1
        if not -n_hidden <= self.config.layer < n_hidden:
            raise ValueError(f"layer {self.config.layer} out of range for {n_hidden} hidden states")
        forward_args = inspect.signature(model.forward).parameters
        self._forward_kwargs = {"output_hidden_states": True, "return_dict": True}
        if "interpolate_pos_encoding" in forward_args:
            self._forward_kwargs["interpolate_pos_encoding"] = True
        self._mean = torch.tensor(self.config.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.config.std, dtype=torch.float32).view(3, 1, 1)

    def geometry(self, image_hw: tuple[int, int]) -> PatchGeometry:
        """The token grid an image of ``image_hw`` gets."""
        return PatchGeometry.for_image(image_hw, self.config.long_side, self.patch_size)

    def preprocess(self, image: np.ndarray, geometry: PatchGeometry) -> torch.Tensor:
        """Resize, normalise and zero-pad ``image`` to ``[1, 3, Hp*P, Wp*P]`` float32."""
        return normalised_pixels(image, geometry, self._mean, self._std)

    def __call__(self, image: np.ndarray) -> FeatureGrid:
        return self.batch([image])[0]

    @torch.no_grad()
    def batch(self, images: Sequence[np.ndarray]) -> list[FeatureGrid]:
        """The feature grid of each of ``images``. Images with equal padded sizes run in one forward pass
        (a ViT's tokens attend to the whole input, so images are never padded to each other's size)."""
        for image in images:
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
                raise ValueError(f"image must be a uint8[H, W, 3] RGB array, got {got}")
        geometries = [self.geometry((im.shape[0], im.shape[1])) for im in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, g in enumerate(geometries):
            groups.setdefault(g.padded_hw, []).append(i)
        out: list[FeatureGrid | None] = [None] * len(images)
        for members in groups.values():
            x = torch.cat([self.preprocess(images[i], geometries[i]) for i in members]).to(self.device)
            for i, grid in zip(members, self._forward(x, [geometries[i] for i in members])):
                out[i] = grid
        return out

    def _forward(self, x: torch.Tensor, geometries: list[PatchGeometry]) -> list[FeatureGrid]:
        """Feature grids of a batch ``x`` of preprocessed images, one per geometry (all of one padded size)."""
        with autocast(self.device, self.config.bf16):
            out = self.model(pixel_values=x, **self._forward_kwargs)
        gh, gw = geometries[0].grid_hw
        hidden = out.hidden_states[self.config.layer]
        features = hidden[:, hidden.shape[1] - gh * gw :].reshape(len(x), gh, gw, -1).to(torch.float16).cpu().numpy()
        saliency = [None] * len(x)
        if self.saliency_head is not None:
            last = out.last_hidden_state[:, out.last_hidden_state.shape[1] - gh * gw :].float()
            prob = self.saliency_head(last, (gh, gw), geometries[0].padded_hw)[:, 0].to(torch.float16).cpu().numpy()
            saliency = [p[: g.resized_hw[0], : g.resized_hw[1]] for p, g in zip(prob, geometries)]
        return [FeatureGrid(f, g, s) for f, g, s in zip(features, geometries, saliency)]
