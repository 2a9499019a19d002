"""The second stage: a light segmentation head on frozen backbone patch features, trained on the pseudo-labels.

Seeds label whole proposals, so a pixel that no proposal covers has no label (at SAM's native input about a
seventh to a quarter of them). The head labels every patch token, so it can:

- **fill** those pixels in a labelled image, restricted to the image's labels (and background where the
  class list has one);
- **label new images** on its own, as an alternative to retrieval against the prototype bank: each proposal
  takes the class of highest mean probability over its cells, and pixels outside every proposal the
  head's class.

**The head** is a linear softmax classifier on unit-norm tokens (``weight [C, K]``, ``bias [K]``).

**Training targets.** A token's target is the class whose proposals cover most of its cell; its weight is
that cover (the fraction of the cell, as soft-masked pooling weighs it) times the proposals' confidence.
So uncertain seeds and tokens on a proposal's edge count less, and uncovered tokens not at all. The softmax
of a token is restricted to its image's labels (and background where it is a class), as at prediction in a
labelled image: the image label already says which classes can be there, and the head learns to tell them
apart rather than to guess them.

**Bounded.** Training takes a uniform sample of at most ``max_tokens`` tokens of the collection: each token
draws a fixed random priority (seeded by its image's content key, so the sample does not depend on the
order the images come in) and the lowest priorities are kept, a reservoir that holds at most 1.25 times
the cap (and one image) between shrinks. Reading the tokens grows linearly with the collection; memory and the training steps do not
grow past the cap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from maskbank.tasks.geometry import PatchGeometry
from maskbank.tasks.pooling import l2_normalize, mask_weights
from maskbank.tasks.models.device import resolve_device

UPSAMPLE_CHANNELS = 256
"""Classes upsampled to the image at once when the head labels pixels (OpenCV resizes at most 512)."""


@dataclass(frozen=True)
class SegmenterConfig:
    """Parameters of :func:`train_head`."""

    epochs: int = 30
    """Passes over the token sample."""
    learning_rate: float = 0.01
    """Peak learning rate of AdamW under a one-cycle schedule."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    batch_tokens: int = 4096
    """Tokens per optimisation step."""
    max_tokens: int = 400_000
    """Tokens the head is trained on at most (a uniform sample of the collection's covered tokens)."""
    seed: int = 0
    """Seed of the token sample, the initial weights and the batch order."""


@dataclass(frozen=True)
class LinearHead:
    """A linear classifier of unit-norm patch tokens into ``K`` classes."""

    weight: np.ndarray  # float32 [C, K]
    bias: np.ndarray  # float32 [K]

    @property
    def num_classes(self) -> int:
        return int(self.bias.shape[0])

    def probabilities(self, tokens: np.ndarray, allowed: Sequence[int] | None = None) -> np.ndarray:
        """``[n, k]`` softmax probabilities of ``[n, C]`` tokens over the ``allowed`` classes (in that order;
        all ``K`` when None)."""
        classes = np.arange(self.num_classes) if allowed is None else np.asarray(allowed, np.int64)
        tokens = l2_normalize(np.asarray(tokens, np.float32).reshape(-1, self.weight.shape[0]))
        logits = tokens @ self.weight[:, classes] + self.bias[classes]
        logits -= logits.max(axis=1, keepdims=True) if len(logits) else 0
        p = np.exp(logits)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def _classes(head: LinearHead, allowed: Sequence[int] | None) -> np.ndarray:
    """The head's classes among ``allowed`` (sorted, distinct), or all of them when None."""
    return np.arange(head.num_classes) if allowed is None else np.unique(np.asarray(allowed, np.int64))


def allowed_classes(labels: Sequence[int] | None, background: bool) -> list[int] | None:
    """The classes a labelled image's pixels may take: its ``labels``, and background (0) where the class list
    has one; None (every class) for an image without labels."""
    if labels is None:
        return None
    return sorted({0, *labels}) if background else sorted(labels)


def proposal_cover(geometry: PatchGeometry, masks: np.ndarray) -> np.ndarray:
    """``[N, T]`` float32: the fraction of each of the grid's ``T`` token cells each of ``[N, H, W]`` masks
    covers (the weights soft-masked pooling gives the tokens)."""
    return mask_weights(geometry, masks).reshape(len(masks), geometry.grid_hw[0] * geometry.grid_hw[1])


def token_targets(cover: np.ndarray, labels: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(label int32 [T], weight float32 [T])`` of a token grid's ``T`` tokens from its proposals: ``cover``
    ``[N, T]`` (the fraction of each token's cell each proposal covers), their ``labels`` ``[N]`` (negative:
    none) and ``confidence`` ``[N]``. A token takes the class of most confident cover; its weight is that
    cover (0 where no labelled proposal covers it)."""
    cover = np.asarray(cover, np.float32)
    labels = np.asarray(labels, np.int64)
    t = cover.shape[1] if cover.ndim == 2 else 0
    keep = labels >= 0
    if not keep.any():
        return np.zeros(t, np.int32), np.zeros(t, np.float32)
    classes, inverse = np.unique(labels[keep], return_inverse=True)
    mass = np.zeros((len(classes), t), np.float32)
    np.add.at(mass, inverse, cover[keep] * np.asarray(confidence, np.float32)[keep, None])
    best = mass.argmax(axis=0)
    return classes[best].astype(np.int32), mass[best, np.arange(t)].astype(np.float32)


def _priorities(image_key: str, n: int, seed: int) -> np.ndarray:
    h = int.from_bytes(hashlib.sha256(f"{seed}:{image_key}".encode()).digest()[:8], "little")
    return np.random.default_rng(h).random(n)


class TokenSample:
    """A uniform sample of at most ``max_tokens`` training tokens over every image :meth:`add` is given (see
    the module's docstring): tokens float16 ``[n, C]``, their labels, weights and image's allowed classes."""

    def __init__(self, max_tokens: int, seed: int = 0) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        self.max_tokens, self.seed = int(max_tokens), seed
        self._parts: list[tuple[np.ndarray, ...]] = []
        self._held = 0
        self._allowed: dict[int, np.ndarray] = {}
        self.images = 0
        self.offered = 0
        """Tokens with a target offered to the sample."""

    def add(self, image_key: str, tokens: np.ndarray, labels: np.ndarray, weights: np.ndarray,
            allowed: Sequence[int]) -> None:
        """Offer one image's ``[T, C]`` tokens with their targets (:func:`token_targets`); tokens of weight 0
        are not training tokens. ``allowed``: the classes its softmax is restricted to."""
        tokens = np.asarray(tokens).reshape(len(labels), -1)
        keep = np.flatnonzero(np.asarray(weights) > 0)
        prio = _priorities(image_key, len(labels), self.seed)[keep]
        slot = self.images
        self.images += 1
        self.offered += len(keep)
        if not len(keep):
            return
        self._allowed[slot] = np.unique(np.asarray(allowed, np.int64))
        self._parts.append((prio, tokens[keep].astype(np.float16), np.asarray(labels, np.int64)[keep],
                            np.asarray(weights, np.float32)[keep], np.full(len(keep), slot, np.int64)))
        self._held += len(keep)
        if self._held > self.max_tokens + max(self.max_tokens // 4, 1):
            self._shrink()

    def _shrink(self) -> None:
        prio, tokens, labels, weights, slots = (np.concatenate(a) for a in zip(*self._parts))
        if len(prio) > self.max_tokens:
            keep = np.sort(np.argpartition(prio, self.max_tokens - 1)[: self.max_tokens])
            prio, tokens, labels, weights, slots = prio[keep], tokens[keep], labels[keep], weights[keep], slots[keep]
        self._parts = [(prio, tokens, labels, weights, slots)]
        self._held = len(prio)
        used = set(np.unique(slots).tolist())
        self._allowed = {s: a for s, a in self._allowed.items() if s in used}

    def __len__(self) -> int:
        return min(self._held, self.max_tokens)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
        """``(tokens, labels, weights, image, allowed)`` of the sample: ``image`` indexes ``allowed``."""
        if self._parts:
            self._shrink()
        if not self._parts:
            return np.zeros((0, 0), np.float16), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64), []
        _, tokens, labels, weights, slots = self._parts[0]
        order = sorted(self._allowed)
        index = {s: i for i, s in enumerate(order)}
        return tokens, labels, weights, np.array([index[s] for s in slots.tolist()], np.int64), [self._allowed[s] for s in order]


def train_head(
    sample: TokenSample,
    num_classes: int,
    config: SegmenterConfig = SegmenterConfig(),
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> tuple[LinearHead, float]:
    """A :class:`LinearHead` trained on ``sample`` (see the module's docstring) and its final mean loss;
    ``progress(1)`` after each epoch. Deterministic for a given sample, config and device."""
    tokens, labels, weights, image, allowed = sample.arrays()
    if not len(labels):
        raise ValueError("no training tokens: no proposal of the labelled images has a label")
    device = resolve_device(device)
    generator = torch.Generator().manual_seed(config.seed)
    allowed_mask = np.zeros((len(allowed), num_classes), bool)
    for i, a in enumerate(allowed):
        allowed_mask[i, a] = True
    x = tokens.astype(np.float32)  # normalised in place: the sample is the largest thing training holds
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.maximum(norms, 1e-12)
    x[norms[:, 0] < 1e-12] = 0.0
    x = torch.from_numpy(x).to(device)
    y = torch.from_numpy(labels).to(device)
    w = torch.from_numpy(weights).to(device)
    img = torch.from_numpy(image).to(device)
    masks = torch.from_numpy(allowed_mask).to(device)
    linear = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():  # initial weights from the sample's own seed, not the global generator
        bound = 1.0 / np.sqrt(x.shape[1])
        linear.weight.uniform_(-bound, bound, generator=generator)
        linear.bias.zero_()
    linear = linear.to(device)
    optimiser = torch.optim.AdamW(linear.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(y) // config.batch_tokens)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.learning_rate,
                                                   total_steps=config.epochs * steps_per_epoch)
    loss_sum = torch.zeros((), device=device)
    for _ in range(config.epochs):
        order = torch.randperm(len(y), generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        for start in range(0, len(y), config.batch_tokens):
            b = order[start : start + config.batch_tokens]
            logits = linear(x[b]).masked_fill(~masks[img[b]], float("-inf"))
            nll = torch.nn.functional.cross_entropy(logits, y[b], reduction="none")
            loss = (nll * w[b]).sum() / w[b].sum().clamp_min(1e-12)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            loss_sum += loss.detach() * len(b)
        if progress is not None:
            progress(1)
    head = LinearHead(linear.weight.detach().cpu().numpy().T.copy().astype(np.float32),
                      linear.bias.detach().cpu().numpy().astype(np.float32))
    return head, float(loss_sum.cpu()) / len(y)


def pixel_labels(head: LinearHead, features: np.ndarray, geometry: PatchGeometry,
                 allowed: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(labels int64 [H, W], probability float32 [H, W])``: the head's class of each pixel of the image and
    its probability, among the ``allowed`` classes (all when None). Probabilities are computed per token and
    upsampled bilinearly to the image, ``UPSAMPLE_CHANNELS`` classes at a time."""
    classes = _classes(head, allowed)
    probs = head.probabilities(features, classes).reshape(*geometry.grid_hw, len(classes))
    best = np.zeros(geometry.image_hw, np.int64)
    best_p = np.full(geometry.image_hw, -1.0, np.float32)
    for lo in range(0, len(classes), UPSAMPLE_CHANNELS):
        part = geometry.to_image(probs[..., lo : lo + UPSAMPLE_CHANNELS], interpolation=cv2.INTER_LINEAR)
        part = part.reshape(*geometry.image_hw, -1)
        arg = part.argmax(axis=2)
        val = np.take_along_axis(part, arg[..., None], axis=2)[..., 0]
        better = val > best_p
        best[better], best_p[better] = classes[lo + arg[better]], val[better]
    return best, best_p


def proposal_votes(head: LinearHead, features: np.ndarray, cover: np.ndarray,
                   allowed: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(labels int32 [N], scores float32 [N])``: each proposal's class of highest mean head probability over
    its cells (weighted by its ``cover`` ``[N, T]`` of each token, as pooling weighs them) among ``allowed``
    (all when None), and that mean probability."""
    classes = _classes(head, allowed)
    if not len(cover):
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    cover = np.asarray(cover, np.float32).reshape(len(cover), -1)
    mean = (cover @ head.probabilities(features, classes)) / np.maximum(cover.sum(axis=1, keepdims=True), 1e-8)
    best = mean.argmax(axis=1)
    return classes[best].astype(np.int32), mean[np.arange(len(best)), best].astype(np.float32)


def fill_uncovered(label_map: np.ndarray, covered: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """``label_map`` with the pixels no proposal ``covered`` taken from ``fill``, in the map's dtype."""
    return np.where(covered, label_map, fill).astype(label_map.dtype)
