"""Models a worker process loads once and reuses across tasks."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache, update_wrapper

from maskbank.flows.params import EmbedParams, ProposeParams
from maskbank.storage.weights import fetch, get_checkpoint
from maskbank.tasks.clip_masks import ClipMaskConfig, ClipMaskEmbedder
from maskbank.tasks.detect import BoxDetector, BoxProposer
from maskbank.tasks.embed import EmbedConfig, FeatureExtractor
from maskbank.tasks.models.backbone import load_backbone
from maskbank.tasks.models.text_image import TextEncoder, load_tokenizer
from maskbank.tasks.models.saliency import SALIENCY_HEAD_FILE, load_saliency_head
from maskbank.tasks.models.sam import build_sam
from maskbank.tasks.models.device import resolve_device
from maskbank.tasks.propose import AutocastPredictor, MaskProposer, ProposerConfig


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


class _PerThread:
    """``build(*args)`` kept for reuse, one instance per running thread, for models that keep per-image state
    while they run: a thread keeps the instance it got until it ends, and the instance then waits for the
    next thread that asks. At most ``maxsize`` argument lists are kept."""

    def __init__(self, build: Callable, maxsize: int) -> None:
        self._build, self._maxsize = build, maxsize
        self._lock = threading.Lock()
        self._spare: OrderedDict[tuple, list] = OrderedDict()
        self._local = threading.local()
        update_wrapper(self, build)

    def __call__(self, *args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        held = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = _Held(self._give_back)
        if key in held.instances:
            return held.instances[key]
        with self._lock:
            spare = self._spare.get(key)
            instance = spare.pop() if spare else None
        if instance is None:
            instance = self._build(*args, **kwargs)
        held.instances[key] = instance
        if len(held.instances) > self._maxsize:
            oldest = next(iter(held.instances))
            self._give_back({oldest: held.instances.pop(oldest)})
        return instance

    def _give_back(self, instances: dict) -> None:
        with self._lock:
            for key, instance in instances.items():
                self._spare.setdefault(key, []).append(instance)
                self._spare.move_to_end(key)
            while len(self._spare) > self._maxsize:
                self._spare.popitem(last=False)

    def cache_clear(self) -> None:
        """Forget the spare instances and this thread's."""
        with self._lock:
            self._spare.clear()
        held = getattr(self._local, "held", None)
        if held is not None:
            held.instances.clear()


class _Held:
    """A thread's instances, handed back when the thread ends (and its thread-local data goes)."""

    def __init__(self, give_back: Callable[[dict], None]) -> None:
        self.instances: dict = {}
        weakref.finalize(self, give_back, self.instances)


def _per_thread(maxsize: int) -> Callable[[Callable], _PerThread]:
    return lambda build: _PerThread(build, maxsize)


@_per_thread(maxsize=2)
def proposer(params: ProposeParams, device: str = "auto") -> MaskProposer:
    """The mask proposer for ``params`` (weights fetched into the cache on first use), one per thread: it
    holds the image it is working on."""
    ckpt = get_checkpoint(params.model)
    sam = build_sam(ckpt.role, fetch(params.model), image_size=params.input_size)
    return MaskProposer(sam, proposer_config(params, device))


@lru_cache(maxsize=2)
def detector(name: str):
    """``(model, processor)`` of detector checkpoint ``name`` (a ``transformers`` Grounding DINO or OWLv2 folder,
    fetched into the cache on first use); the model keeps no state between calls, so threads share it."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    folder = fetch(name)
    return AutoModelForZeroShotObjectDetection.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


@_per_thread(maxsize=2)
def box_proposer(params: ProposeParams, rest_region: bool, device: str = "auto") -> BoxProposer:
    """Proposals from ``params.detector``'s boxes and SAM's masks in them, one per thread: SAM's predictor holds
    the image it is working on."""
    model, processor = detector(params.detector)
    sam = build_sam(get_checkpoint(params.model).role, fetch(params.model), image_size=params.input_size)
    predictor = AutocastPredictor(sam.to(resolve_device(device)).eval(), params.bf16)
    return BoxProposer(BoxDetector(model, processor, params.detect_config(device)), predictor, params.min_area,
                       rest_region)


@lru_cache(maxsize=2)
def extractor(params: EmbedParams, device: str = "auto") -> FeatureExtractor:
    """The feature extractor for ``params``, with the checkpoint's saliency head when asked and present; it
    keeps no state between calls, so threads share it."""
    folder = fetch(params.model)
    head = None
    if params.saliency and (folder / SALIENCY_HEAD_FILE).is_file():
        head = load_saliency_head(folder)
    config = EmbedConfig(layer=params.layer, long_side=params.long_side, device=device, bf16=params.bf16)
    return FeatureExtractor(load_backbone(folder), config, saliency_head=head)


@lru_cache(maxsize=2)
def _text_image_model(name: str):
    """A text-image checkpoint's model (fetched into the cache on first use), shared by its two sides."""
    return load_backbone(fetch(name))


@lru_cache(maxsize=2)
def clip_embedder(name: str, bias: float, device: str = "auto") -> ClipMaskEmbedder:
    """DBA-CLIP proposal embeddings with checkpoint ``name``; it keeps no state between calls."""
    return ClipMaskEmbedder(_text_image_model(name), ClipMaskConfig(bias=bias, device=device))


@lru_cache(maxsize=2)
def text_encoder(name: str, device: str = "auto") -> TextEncoder:
    """The text side of checkpoint ``name``, with the tokenizer its folder holds."""
    return TextEncoder(_text_image_model(name), load_tokenizer(fetch(name)), device=device)
