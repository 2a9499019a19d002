"""Class-agnostic mask proposals: Segment Anything automatic masks, and their non-overlapping cut.

:class:`MaskProposer` runs SAM automatic mask generation (a grid of point prompts, IoU and stability
filtering, box NMS) and returns :class:`~maskbank.tasks.proposals.Proposals` (COCO RLEs with their
scores). Two generators compute it: ``"fast"`` (:class:`~maskbank.tasks.fast_amg.FastMaskGenerator`, the
default) and ``"stock"`` (Meta's ``SamAutomaticMaskGenerator``); in float32 they give the same masks.
:func:`non_overlapping` turns overlapping proposals into disjoint regions, the way ModuSeg paints its
entity masks: higher-scoring masks win contested pixels and small leftovers are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import Sam

from maskbank.tasks import rle
from maskbank.tasks.fast_amg import FastMaskGenerator
from maskbank.tasks.models.device import autocast, resolve_device
from maskbank.tasks.models.sam import build_sam
from maskbank.tasks.proposals import Proposals

# ModuSeg keeps entity masks of at least 300 px on VOC/COCO images of about 500x375 px;
# as a fraction of the image area this carries over to any resolution.
DEFAULT_MIN_AREA = 300 / (500 * 375)

Generator = Literal["fast", "stock"]

POINTS_PER_BATCH = {"cpu": 16, "cuda": 256}
"""Point prompts decoded at once unless told: on a CPU 16 keeps the decoder's activations in cache and runs
faster than 64; on CUDA the 256 prompts of the default 16x16 grid go in one batch."""


@dataclass(frozen=True)
class ProposerConfig:
    """Settings of :class:`MaskProposer` (thresholds as in ``SamAutomaticMaskGenerator``).

    ``input_size`` is the SAM encoder's square input: 1024 is native, 512 is about 4x faster and
    misses small parts. ``min_area`` is the smallest region :func:`non_overlapping` keeps, as a
    fraction of the image area (see :meth:`min_area_pixels`). ``generator`` picks the mask generator:
    ``"fast"`` or Meta's ``"stock"`` one (see the module docstring). ``points_per_batch`` prompts are
    decoded at once; unset, it is :data:`POINTS_PER_BATCH` of the device.
    """

    input_size: int = 1024
    points_per_side: int = 16
    points_per_batch: int | None = None
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    bf16: bool = True
    device: str = "auto"
    min_area: float = DEFAULT_MIN_AREA
    generator: Generator = "fast"

    def __post_init__(self) -> None:
        if self.generator not in get_args(Generator):
            raise ValueError(f"generator must be one of {get_args(Generator)}, got {self.generator!r}")
        if self.input_size < 16 or self.input_size % 16:
            raise ValueError(f"input_size must be a positive multiple of 16, got {self.input_size}")
        if self.points_per_side < 1 or (self.points_per_batch is not None and self.points_per_batch < 1):
            raise ValueError("points_per_side and points_per_batch must be >= 1")
        if not 0.0 <= self.min_area < 1.0:
            raise ValueError(f"min_area is a fraction of the image area in [0, 1), got {self.min_area}")
        if self.min_mask_region_area < 0:
            raise ValueError(f"min_mask_region_area must be >= 0, got {self.min_mask_region_area}")

    def prompts_per_batch(self, device: torch.device) -> int:
        """``points_per_batch``, or when unset :data:`POINTS_PER_BATCH` of ``device``'s type."""
        return self.points_per_batch or POINTS_PER_BATCH[device.type]

    def min_area_pixels(self, image_hw: tuple[int, int]) -> int:
        """``min_area`` in pixels for an image of ``image_hw`` (at least 1)."""
        return area_pixels(self.min_area, image_hw)


def area_pixels(fraction: float, image_hw: tuple[int, int]) -> int:
    """An area given as a ``fraction`` of an ``image_hw`` image, in pixels (at least 1)."""
    return max(1, round(fraction * image_hw[0] * image_hw[1]))


class AutocastPredictor(SamPredictor):
    """``SamPredictor`` that runs the encoder and decoder under optional bf16 autocast.

    IoU predictions come back as float32 (the generator turns them into numpy, which has no bf16);
    mask logits stay in the autocast dtype to halve the memory of the full-size upsampled masks.
    """

    def __init__(self, sam: Sam, bf16: bool) -> None:
        super().__init__(sam)
        self.bf16 = bf16

    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        with autocast(self.device, self.bf16):
            super().set_torch_image(transformed_image, original_image_size)

    def predict_torch(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.bf16):
            masks, iou_predictions, low_res_masks = super().predict_torch(*args, **kwargs)
        return masks, iou_predictions.float(), low_res_masks


class _Generator(SamAutomaticMaskGenerator):
    """Meta's generator, its model run under optional bf16 autocast."""

    def __init__(self, sam: Sam, bf16: bool, **kwargs) -> None:
        super().__init__(sam, **kwargs)
        self.predictor = AutocastPredictor(sam, bf16)

    def generate_batch(self, images: Sequence[np.ndarray]) -> list[list[dict]]:
        """``generate`` for each image in turn (the stock generator encodes one image at a time)."""
        return [self.generate(im) for im in images]


class MaskProposer:
    """Segment Anything automatic mask generation on ``uint8[H, W, 3]`` RGB images, one at a time or in
    batches (:meth:`batch`: the fast generator encodes a batch in one forward pass)."""

    def __init__(self, sam: Sam, config: ProposerConfig | None = None) -> None:
        self.config = config or ProposerConfig()
        if sam.image_encoder.img_size != self.config.input_size:
            raise ValueError(
                f"SAM encoder input is {sam.image_encoder.img_size} but config.input_size is {self.config.input_size}"
            )
        self.device = resolve_device(self.config.device)
        self.sam = sam.to(self.device).eval()
        c = self.config
        generator = FastMaskGenerator if c.generator == "fast" else _Generator
        self.generator = generator(
            self.sam,
            bf16=c.bf16,
            points_per_side=c.points_per_side,
            points_per_batch=c.prompts_per_batch(self.device),
            pred_iou_thresh=c.pred_iou_thresh,
            stability_score_thresh=c.stability_score_thresh,
            box_nms_thresh=c.box_nms_thresh,
            min_mask_region_area=c.min_mask_region_area,
            output_mode="coco_rle",
        )

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Path | str | None, config: ProposerConfig | None = None, arch: str = "vit_t"
    ) -> MaskProposer:
        """Build the ``arch`` SAM at ``config.input_size`` from ``checkpoint`` and wrap it."""
        config = config or ProposerConfig()
        return cls(build_sam(arch, checkpoint, image_size=config.input_size), config)

    def __call__(self, image: np.ndarray) -> Proposals:
        """Proposals for ``image``, best predicted IoU first.

        An image with a side of one pixel has nothing to segment and gets no proposals (SAM's box NMS
        cannot tell apart masks one pixel wide). Identical masks are kept once.
        """
        return self.batch([image])[0]

    def batch(self, images: Sequence[np.ndarray]) -> list[Proposals]:
        """Proposals for each of ``images`` (as :meth:`__call__`), the encoder run once over the batch."""
        for image in images:
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
                raise ValueError(f"image must be a uint8[H, W, 3] RGB array, got {got}")
        out: list[Proposals] = [Proposals.empty(im.shape[:2]) for im in images]
        live = [i for i, im in enumerate(images) if min(im.shape[:2]) >= 2]
        generated = self.generator.generate_batch([np.ascontiguousarray(images[i]) for i in live])
        for i, records in zip(live, generated):
            out[i] = _proposals(records, images[i].shape[:2])
        return out


def _proposals(records: list[dict], image_hw: tuple[int, int]) -> Proposals:
    """A generator's records as :class:`Proposals`, best predicted IoU first, identical masks kept once."""
    records = sorted(records, key=lambda r: -r["predicted_iou"])
    seen: set[str] = set()
    unique = []
    for r in records:
        if r["segmentation"]["counts"] not in seen:
            seen.add(r["segmentation"]["counts"])
            unique.append(r)
    return Proposals.from_rles(
        [{"size": list(image_hw), "counts": r["segmentation"]["counts"]} for r in unique],
        np.array([r["predicted_iou"] for r in unique]),
        np.array([r["stability_score"] for r in unique]),
        image_hw,
    )


def non_overlapping(props: Proposals, min_area: int, rank: np.ndarray | None = None) -> Proposals:
    """Disjoint regions from overlapping proposals.

    Masks are painted in ascending ``rank`` order (unset: their ``score``) so higher ranks win contested
    pixels (on equal ranks the earlier mask wins). Each mask keeps its visible pixels; regions with fewer
    than ``max(min_area, 1)`` pixels are dropped. Boxes and areas are recomputed; scores, box classes and
    order kept.
    """
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0, got {min_area}")
    if len(props) == 0:
        return props
    masks = props.masks()
    owner = np.full(props.image_hw, -1, dtype=np.int64)
    best_first = np.argsort(-(props.score if rank is None else np.asarray(rank)), kind="stable")
    for i in best_first[::-1]:
        owner[masks[i]] = i
    visible = np.bincount(owner.ravel() + 1, minlength=len(props) + 1)[1:]
    keep = np.flatnonzero(visible >= max(min_area, 1))
    coded = rle.encode(owner[None] == keep[:, None, None])
    return replace(props.select(keep), rles=coded, bbox=rle.bbox(coded), area=rle.area(coded))
