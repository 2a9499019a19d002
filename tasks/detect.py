"""Open-vocabulary boxes and SAM masks in them: the SAM-in-boxes pipeline's proposal step.

A detector (Grounding DINO or OWLv2, ``transformers`` ports) is asked for the dataset's class names; every box
whose best class scores at least ``box_threshold`` is kept with that class (class-wise NMS at ``nms_iou``), and
SAM, prompted with the box, gives its mask. Grounding DINO reads one text of names joined by " . ", at most
``max_text_tokens`` tokens (its text limit, 256): longer class lists are split into several prompts
(:func:`split_prompts`) and the image is run once per prompt. A class's score is the highest score of the
tokens of its name (which must also reach ``text_threshold``), so boxes map to classes by token positions, not
by decoding phrases. OWLv2 takes each name as a query of its own (``a photo of a {name}``), ``queries_per_pass``
at a time.

:class:`BoxProposer` makes an image's proposals of it: SAM's masks in the boxes, made non-overlapping (a
higher detector score wins a contested pixel), each with its box's class and score, and optionally the rest of
the image (the pixels in no mask) as one more region of no class, which the seeds make background.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torchvision.ops import batched_nms

from maskbank.tasks import rle
from maskbank.tasks.models.device import resolve_device
from maskbank.tasks.proposals import REST, Proposals
from maskbank.tasks.propose import area_pixels, non_overlapping

if TYPE_CHECKING:
    from segment_anything import SamPredictor

SEPARATOR = " . "


@dataclass(frozen=True)
class DetectConfig:
    """Settings of :class:`BoxDetector` (Grounding DINO's published defaults: box 0.35, text 0.25).
    ``max_text_tokens`` is lowered to the model's own text limit where that is smaller."""

    box_threshold: float = 0.35
    text_threshold: float = 0.25
    nms_iou: float = 0.5
    max_text_tokens: int = 256
    queries_per_pass: int = 16
    owl_template: str = "a photo of a {}"
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("box_threshold", "text_threshold", "nms_iou"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_text_tokens < 3 or self.queries_per_pass < 1:
            raise ValueError("max_text_tokens must be at least 3 and queries_per_pass at least 1")


@dataclass
class Boxes:
    """Detections of one image: ``boxes`` ``float32[N, 4]`` (x0, y0, x1, y1 in image pixels), ``labels``
    ``int32[N]`` (positions in the class names asked for), ``scores`` ``float32[N]``."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def split_prompts(names: Sequence[str], count_tokens: Callable[[str], int], max_tokens: int) -> list[list[int]]:
    """Consecutive groups of ``names`` (their positions) whose prompt ``"a . b . c ."`` takes at most
    ``max_tokens`` tokens by ``count_tokens`` (which counts the special tokens too); a name that does not fit
    alone is an error."""
    groups: list[list[int]] = []
    for i, name in enumerate(names):
        if count_tokens(name + SEPARATOR.rstrip()) > max_tokens:
            raise ValueError(f"the class name {name!r} alone is longer than the detector's {max_tokens} text tokens")
        if groups and count_tokens(_prompt([names[j] for j in groups[-1]] + [name])) <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _prompt(names: Sequence[str]) -> str:
    return SEPARATOR.join(names) + SEPARATOR.rstrip()


class BoxDetector:
    """Boxes of the named classes in an image, from a ``transformers`` Grounding DINO or OWLv2 detector and its
    processor."""

    def __init__(self, model: torch.nn.Module, processor, config: DetectConfig | None = None) -> None:
        self.config = config or DetectConfig()
        self.family = {"grounding-dino": "grounding_dino", "owlv2": "owlv2"}.get(getattr(model.config, "model_type", ""))
        if self.family is None:
            raise ValueError(f"a box detector must be Grounding DINO or OWLv2, got {type(model).__name__}")
        self.device = resolve_device(self.config.device)
        self.model = model.to(self.device).eval()
        self.processor = processor

    @torch.no_grad()
    def __call__(self, image: np.ndarray, names: Sequence[str]) -> Boxes:
        image = np.require(image, requirements="W")  # the processors make tensors of it in place
        h, w = image.shape[:2]
        parts = self._grounding_dino(image, names) if self.family == "grounding_dino" else self._owlv2(image, names)
        boxes = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, 4)
        scores = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, len(names))
        best, labels = scores.max(dim=1) if len(scores) else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
        keep = best >= self.config.box_threshold
        boxes, best, labels = boxes[keep], best[keep], labels[keep]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # boxes wholly off the image go
        boxes, best, labels = boxes[inside], best[inside], labels[inside]
        keep = batched_nms(boxes, best, labels, self.config.nms_iou)
        return Boxes(boxes[keep].numpy().astype(np.float32), labels[keep].numpy().astype(np.int32),
                     best[keep].numpy().astype(np.float32))

    def _grounding_dino(self, image: np.ndarray, names: Sequence[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        tokenizer = self.processor.tokenizer
        count = lambda text: len(tokenizer(text)["input_ids"])
        limit = min(self.config.max_text_tokens, getattr(self.model.config, "max_text_len", self.config.max_text_tokens))
        pixels = self.processor.image_processor(images=image, return_tensors="pt")
        h, w = image.shape[:2]
        out = []
        for group in split_prompts(names, count, limit):
            ids, spans = [tokenizer.cls_token_id], []
            for j in group:
                name_ids = tokenizer(names[j], add_special_tokens=False)["input_ids"]
                spans.append((len(ids), len(ids) + len(name_ids)))
                ids += name_ids + tokenizer(".", add_special_tokens=False)["input_ids"]
            ids.append(tokenizer.sep_token_id)
            input_ids = torch.tensor([ids], device=self.device)
            result = self.model(pixel_values=pixels["pixel_values"].to(self.device),
                                pixel_mask=pixels["pixel_mask"].to(self.device), input_ids=input_ids,
                                attention_mask=torch.ones_like(input_ids), token_type_ids=torch.zeros_like(input_ids))
            token_scores = result.logits[0].sigmoid().float().cpu()  # [queries, text tokens]
            scores = torch.zeros(len(token_scores), len(names))
            for j, (a, b) in zip(group, spans):
                s = token_scores[:, a:b].max(dim=1).values
                scores[:, j] = torch.where(s >= self.config.text_threshold, s, torch.zeros_like(s))
            out.append((_corners(result.pred_boxes[0].float().cpu(), w, h), scores))
        return out

    def _owlv2(self, image: np.ndarray, names: Sequence[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """OWLv2's boxes come from the image alone and each query is scored on its own, so every pass scores
        the same boxes: one candidate per box, with the scores of all passes."""
        side = max(image.shape[:2])  # OWLv2 pads the image to a square at the bottom and right
        boxes, scores = None, None
        for start in range(0, len(names), self.config.queries_per_pass):
            chunk = list(range(start, min(start + self.config.queries_per_pass, len(names))))
            inputs = self.processor(text=[[self.config.owl_template.format(names[j]) for j in chunk]], images=image,
                                    return_tensors="pt", padding="max_length", truncation=True)
            result = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
            if boxes is None:
                boxes = _corners(result.pred_boxes[0].float().cpu(), side, side)
                scores = torch.zeros(len(boxes), len(names))
            scores[:, chunk] = result.logits[0].sigmoid().float().cpu()
        return [] if boxes is None else [(boxes, scores)]


def _corners(boxes: torch.Tensor, w: float, h: float) -> torch.Tensor:
    """Normalised (cx, cy, w, h) to pixel (x0, y0, x1, y1) on a ``w`` × ``h`` frame."""
    cx, cy, bw, bh = boxes.unbind(-1)
    return torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], dim=-1)


@torch.no_grad()
def box_masks(predictor: SamPredictor, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SAM's mask inside each of ``float32[N, 4]`` pixel boxes of ``image`` (one mask per box, the single-output
    mode SAM uses for box prompts): ``bool[N, H, W]``, SAM's predicted IoU and the masks' stability scores
    (``float32[N]`` each, the stability as SAM's automatic generator measures it)."""
    from segment_anything.utils.amg import calculate_stability_score

    h, w = image.shape[:2]
    if len(boxes) == 0:
        return np.zeros((0, h, w), bool), np.zeros(0, np.float32), np.zeros(0, np.float32)
    predictor.set_image(image)
    prompts = predictor.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float32,
                                                                    device=predictor.device), (h, w))
    logits, iou, _ = predictor.predict_torch(None, None, boxes=prompts, multimask_output=False, return_logits=True)
    logits = logits[:, 0].float()
    threshold = predictor.model.mask_threshold
    stability = calculate_stability_score(logits, threshold, 1.0)
    return ((logits > threshold).cpu().numpy(), iou[:, 0].float().cpu().numpy(),
            stability.float().cpu().numpy().astype(np.float32))


class BoxProposer:
    """An image's proposals from the boxes ``detector`` finds for the named classes, with SAM's mask in each
    box (``predictor``): non-overlapping (the higher detector score wins a contested pixel), regions under
    ``min_area`` (a fraction of the image) dropped, each with its box's class (its position in the names) and
    score. With ``rest_region``, the pixels in no mask (when at least ``min_area``) are one more region, of class
    :data:`REST` and no scores (NaN)."""

    def __init__(self, detector: BoxDetector, predictor: SamPredictor, min_area: float, rest_region: bool) -> None:
        self.detector, self.predictor = detector, predictor
        self.min_area, self.rest_region = min_area, rest_region

    def __call__(self, image: np.ndarray, names: Sequence[str]) -> Proposals:
        hw = image.shape[:2]
        found = self.detector(image, names)
        masks, iou, stability = box_masks(self.predictor, image, found.boxes)
        coded = rle.encode(masks)
        props = Proposals(coded, iou, stability, rle.bbox(coded), rle.area(coded), hw, found.labels, found.scores)
        least = area_pixels(self.min_area, hw)
        props = non_overlapping(props, least, rank=found.scores)
        if not self.rest_region:
            return props
        rest = ~props.masks().any(axis=0) if len(props) else np.ones(hw, bool)
        if rest.sum() < least:
            return props
        extra = rle.encode(rest[None])
        nan = np.full(1, np.nan, np.float32)
        return Proposals(props.rles + extra, np.append(props.predicted_iou, nan), np.append(props.stability_score, nan),
                         np.concatenate([props.bbox, rle.bbox(extra)]), np.append(props.area, rle.area(extra)), hw,
                         np.append(props.box_class, REST), np.append(props.box_score, nan))
