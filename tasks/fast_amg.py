"""Automatic mask generation with SAM, computing full-resolution masks only for the masks that can survive.

:class:`FastMaskGenerator` is a drop-in ``SamAutomaticMaskGenerator`` (same arguments, same records)
that changes how each crop is processed, not what is kept:

- point prompts run through :class:`~maskbank.tasks.point_decoder.PointDecoder`, which shares the
  prompt-independent half of the mask decoder across prompts and skips the mask upscaling of prompts
  whose three outputs all fail the predicted-IoU threshold;
- only masks that pass the predicted-IoU threshold are upsampled to the image (the stock generator
  upsamples all three outputs of every prompt first), in chunks of bounded memory;
- box NMS runs on the boxes of the upsampled masks, and only the masks it keeps are run-length encoded;
- :meth:`~FastMaskGenerator.generate_batch` runs the image encoder once over a batch of images (on a GPU,
  one image leaves most of it idle), then generates each image's masks from its share of the features.

Stability score, box and edge filters are computed exactly as in the stock generator, on the same
full-resolution logits. With ``bf16`` the image encoder runs under bfloat16 autocast and the point
decoder in bfloat16.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    MaskData,
    batch_iterator,
    batched_mask_to_box,
    calculate_stability_score,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from torchvision.ops.boxes import batched_nms

from maskbank.tasks.models.device import autocast
from maskbank.tasks.point_decoder import PointDecoder

# Upsample at most this many full-resolution logits at once (float32: 64 MiB).
CHUNK_ELEMENTS = 2**24


class FastMaskGenerator(SamAutomaticMaskGenerator):
    """``SamAutomaticMaskGenerator`` with a faster per-crop pass; ``bf16`` runs the model in bfloat16."""

    def __init__(self, model: Sam, bf16: bool = False, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.bf16 = bf16
        self.decoder = PointDecoder(model, torch.bfloat16 if bf16 else None)
        self._encoded: torch.Tensor | None = None  # the next image's features, from generate_batch

    @torch.no_grad()
    def encode(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Image-encoder features ``[B, C, h, w]`` of ``uint8[H, W, 3]`` RGB images of any sizes, in one
        forward pass: each image is resized and padded to the encoder's square input as ``set_image`` does."""
        p = self.predictor
        inputs = [
            p.model.preprocess(
                torch.as_tensor(p.transform.apply_image(im), device=p.device).permute(2, 0, 1).contiguous()[None]
            )
            for im in images
        ]
        with autocast(p.device, self.bf16):
            return p.model.image_encoder(torch.cat(inputs))

    def generate_batch(self, images: Sequence[np.ndarray]) -> list[list[dict[str, Any]]]:
        """``generate`` for each image, the encoder run once over all of them. With crop layers (several
        crops per image) each image is encoded on its own, as ``generate`` does."""
        if self.crop_n_layers > 0 or len(images) < 2:
            return [self.generate(im) for im in images]
        features = self.encode(images)
        records = []
        for image, encoded in zip(images, features):
            self._encoded = encoded[None]
            try:
                records.append(self.generate(image))
            finally:
                self._encoded = None
        return records

    def _set_image(self, image: np.ndarray) -> None:
        """Give the predictor ``image``: its features from ``generate_batch`` when there are, else encoded now."""
        p = self.predictor
        if self._encoded is None:
            with autocast(p.device, self.bf16):
                p.set_image(image)
            return
        p.reset_image()
        p.original_size = image.shape[:2]
        p.input_size = p.transform.get_preprocess_shape(*image.shape[:2], p.model.image_encoder.img_size)
        p.features, p.is_image_set = self._encoded, True

    def _process_crop(
        self,
        image: np.ndarray,
        crop_box: list[int],
        crop_layer_idx: int,
        orig_size: tuple[int, ...],
    ) -> MaskData:
        x0, y0, x1, y1 = crop_box
        cropped_im = image[y0:y1, x0:x1, :]
        cropped_im_size = cropped_im.shape[:2]
        self._set_image(cropped_im)
        self.decoder.set_image(self.predictor.features)

        points_scale = np.array(cropped_im_size)[None, ::-1]
        points_for_image = self.point_grids[crop_layer_idx] * points_scale
        data = MaskData()
        for (points,) in batch_iterator(self.points_per_batch, points_for_image):
            data.cat(self._process_points(points, cropped_im_size, crop_box, orig_size))
        self.decoder.reset_image()

        keep_by_nms = batched_nms(
            data["boxes"].float(),
            data["iou_preds"],
            torch.zeros(len(data["boxes"]), device=data["boxes"].device),
            iou_threshold=self.box_nms_thresh,
        )
        data.filter(keep_by_nms)

        # Run-length encode what NMS kept, at the crop's resolution and then in the image frame
        orig_h, orig_w = orig_size
        rles = []
        for logits in self._upsampled(data["low_res_logits"], cropped_im_size):
            masks = uncrop_masks(logits > self.predictor.model.mask_threshold, crop_box, orig_h, orig_w)
            rles.extend(mask_to_rle_pytorch(masks))
        self.predictor.reset_image()
        del data["low_res_logits"]
        data["rles"] = rles
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = torch.tensor([crop_box for _ in range(len(data["rles"]))])
        return data

    def _process_points(
        self,
        points: np.ndarray,
        im_size: tuple[int, ...],
        crop_box: list[int],
        orig_size: tuple[int, ...],
    ) -> MaskData:
        orig_h, orig_w = orig_size
        transformed_points = self.predictor.transform.apply_coords(points, im_size)
        in_points = torch.as_tensor(transformed_points, dtype=torch.float32, device=self.predictor.device)
        decoded = self.decoder.decode(in_points)
        iou_preds = self.decoder.iou(decoded)  # [B, 3]

        # Filter by predicted IoU before any mask is upscaled
        keep = iou_preds > self.pred_iou_thresh if self.pred_iou_thresh > 0.0 else torch.ones_like(iou_preds).bool()
        prompts = keep.any(dim=1)
        low_res = self.decoder.masks(decoded, prompts)[keep[prompts]].float()
        data = MaskData(
            low_res_logits=low_res,
            iou_preds=iou_preds[keep],
            points=torch.as_tensor(points, dtype=torch.float64).repeat_interleave(3, dim=0)[keep.flatten().cpu()],
        )

        # Stability score on the full-resolution logits, as the stock generator computes it; boxes of the stable
        threshold = self.predictor.model.mask_threshold
        stability, boxes = [], []
        for logits in self._upsampled(low_res, im_size):
            score = calculate_stability_score(logits, threshold, self.stability_score_offset)
            stability.append(score)
            boxes.append(batched_mask_to_box(logits[self._stable(score)] > threshold))
        data["stability_score"] = torch.cat(stability)
        data.filter(self._stable(data["stability_score"]))
        data["boxes"] = torch.cat(boxes)

        # Filter boxes that touch crop boundaries
        keep_mask = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if not torch.all(keep_mask):
            data.filter(keep_mask)
        return data

    def _upsampled(self, low_res: torch.Tensor, im_size: tuple[int, ...]) -> Iterator[torch.Tensor]:
        """Yield chunks of ``low_res`` logits ``[M, h, w]`` upsampled to ``im_size`` as ``[m, H, W]``.

        Same values as ``Sam.postprocess_masks`` (bilinear to the encoder's square input, crop the padding,
        bilinear to ``im_size``), but the first upsampling only covers the low-resolution rows and columns
        that the crop reads.
        """
        side = self.predictor.model.image_encoder.img_size
        scale = side // low_res.shape[-1]
        input_h, input_w = self.predictor.input_size
        rows = min(low_res.shape[-2], math.ceil(input_h / scale) + 1)
        cols = min(low_res.shape[-1], math.ceil(input_w / scale) + 1)
        chunk = max(1, CHUNK_ELEMENTS // max(rows * cols * scale * scale, im_size[0] * im_size[1]))
        for start in range(0, max(low_res.shape[0], 1), chunk):  # one empty chunk when there are no masks
            logits = low_res[start : start + chunk, None, :rows, :cols]
            logits = F.interpolate(logits, scale_factor=scale, mode="bilinear", align_corners=False)
            logits = F.interpolate(logits[..., :input_h, :input_w], im_size, mode="bilinear", align_corners=False)
            yield logits[:, 0]

    def _stable(self, score: torch.Tensor) -> torch.Tensor:
        """Which stability scores pass ``stability_score_thresh`` (all of them when it is 0)."""
        if self.stability_score_thresh > 0.0:
            return score >= self.stability_score_thresh
        return torch.ones_like(score).bool()
