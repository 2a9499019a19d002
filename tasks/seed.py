"""Seed labels: which of its image's labels (or background) each proposal is, from image-level labels alone.

No text model and no ground truth: the evidence is how a proposal's feature relates to proposals of *other*
labelled images.

1. **Class contrast** (cross-image evidence). An object of class ``c`` finds a close match in some other
   image labelled ``c``, and matches images *without* ``c`` clearly worse; background stuff (sky, road,
   wall) matches both groups alike. The score of ``c`` is the proposal's best match over the other images
   labelled ``c`` minus a high quantile of its best matches over images without ``c``. A class no other
   image has gives no evidence (0).
2. **Foreground prior** (optional). A saliency value per proposal in [0, 1] (e.g. the DINOv2 saliency head)
   shifts the background score.
3. **Every label is somewhere** (``claim_labels``, on by default). Each of an image's labels claims at least
   its best-scoring proposal (multiple-instance constraint: an image label says the class is in the image).
   With coarse proposals (512 px SAM input) small labelled objects (a tie, a fork) often have no proposal of
   their own and take one from a larger object; at the native 1024 input they mostly do.
4. **Refinement**. Seeds become a leave-one-image-out prototype bank: each proposal is re-scored by its
   class-balanced similarity to the seeds of each allowed class (its image's labels) relative to the
   background seeds in other images, added to the contrast score, and re-assigned; ``rounds`` times.

**Bounded evidence.** The images a proposal is compared with are capped: for each class, the first
``evidence_per_class`` images labelled with it, and a reference sample of the first ``reference_images``
images of the collection (the images *without* a class are those of the reference sample without it), in
a fixed priority order (the caller's, e.g. by content key, so the sample does not depend on where an image
sits in its dataset). Below the caps every image is evidence and the result is that of comparing every
proposal with every other; above it the best match over a class's images becomes the best over a sample of
them and the quantile over images without it a quantile over a sample. Proposals are streamed in blocks
(``block`` proposals at a time): memory holds the evidence (about ``classes x evidence_per_class +
reference_images`` images' features) and a few numbers per proposal, whatever the collection's size, and time grows linearly with it.

Features are unit-norm rows, one per proposal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from maskbank.tasks.models.device import resolve_device


@dataclass(frozen=True)
class SeedConfig:
    """Parameters of :func:`seed_images`."""

    quantile: float = 0.75
    """Quantile of a proposal's best matches in images *without* a class that its evidence is measured against."""
    contrast_scale: float = 0.1
    """Cosine contrast worth one unit of score."""
    background_bias: float = 0.5
    """Score of background; a class must beat it to claim a proposal."""
    saliency_weight: float = 1.0
    """Weight of the foreground prior's logit (0 disables it)."""
    rounds: int = 6
    """Refinement rounds against the current seeds of the other images (they converge by about 6: BENCHMARKS.md,
    "Seeding ablations")."""
    top_per_class: int = 3
    """Seeds per class averaged when re-scoring (class-balanced: frequent classes get no extra votes)."""
    refine_weight: float = 1.0
    """Weight of prototype evidence (similarity to a class's seeds minus to background seeds) in refinement."""
    temperature: float = 0.1
    """Cosine difference worth one unit of score in refinement."""
    claim_labels: bool = True
    """Make every image label claim at least one proposal."""
    background: bool = True
    """Whether a proposal may be background. False for collections whose class list has no background (scene
    datasets: every pixel is one of the image's labels): a proposal of a labelled image then takes one of its
    labels, the foreground prior is not used, and refinement compares a proposal's classes with each other
    instead of with background seeds. An image without labels still gets background."""
    evidence_per_class: int = 128
    """Images labelled with a class that serve as its evidence (the first in priority order)."""
    reference_images: int = 256
    """Images of the reference sample that the images without a class are taken from."""
    block: int = 4096
    """Proposals scored at once (a block holds ``block`` x the evidence proposals of a class in floats)."""


@dataclass
class SeedResult:
    """Per-proposal seed labels (0 = background), the score of the chosen label, and its confidence: its
    probability under a softmax of the proposal's scores over the classes it may take (its image's labels,
    and background where allowed); 1 where it may take one class only."""

    labels: np.ndarray  # int32 [P]
    scores: np.ndarray  # float32 [P]
    confidence: np.ndarray  # float32 [P]


class ProposalReader(Protocol):
    def __call__(self, images: np.ndarray, saliency: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The ``[p, C]`` unit-norm features of the proposals of ``images`` (image ids, concatenated in that
        order) and, when ``saliency``, their ``[p]`` foreground prior."""


@dataclass
class _Rows:
    """Feature rows on the device grouped by image, in image order."""

    images: np.ndarray  # int64 [g] sorted image ids
    starts: np.ndarray  # int64 [g] first row of each image
    ends: np.ndarray  # int64 [g] one past its last row
    features: torch.Tensor  # [n, C]

    @classmethod
    def of(cls, features: torch.Tensor, owner: np.ndarray) -> _Rows:
        images, starts, n = np.unique(owner, return_index=True, return_counts=True)
        return cls(images.astype(np.int64), starts.astype(np.int64), (starts + n).astype(np.int64), features)

    def similarity(self, q: torch.Tensor, owner: np.ndarray) -> torch.Tensor:
        """``[q, n]`` cosines of the (image-ordered) queries with every row, -inf with rows of their own image."""
        sims = q @ self.features.T
        images, first, n = np.unique(owner, return_index=True, return_counts=True)
        pos = np.searchsorted(self.images, images).clip(max=max(len(self.images) - 1, 0))
        for i in np.flatnonzero(self.images[pos] == images) if len(self.images) else ():
            sims[first[i] : first[i] + n[i], self.starts[pos[i]] : self.ends[pos[i]]] = -torch.inf
        return sims

    def best_per_image(self, q: torch.Tensor, owner: np.ndarray) -> np.ndarray:
        """``[q, g]`` cosine of each query's best match in each image (-inf in its own image)."""
        sims = self.similarity(q, owner)
        if not len(self.images):
            return np.zeros((len(q), 0), np.float32)
        if sims.device.type == "cpu":
            return np.maximum.reduceat(sims.numpy(), self.starts, axis=1)
        seg = torch.as_tensor(np.repeat(np.arange(len(self.images)), self.ends - self.starts), device=sims.device)
        best = torch.full((sims.shape[0], len(self.images)), -torch.inf, device=sims.device)
        best.scatter_reduce_(1, seg.expand(sims.shape[0], -1), sims, reduce="amax", include_self=True)
        return best.cpu().numpy()


@dataclass
class _Group:
    """Evidence images: their proposals' features and global proposal indices."""

    rows: np.ndarray  # int64 [n] global proposal index of each row
    owner: np.ndarray  # int64 [n] image id of each row
    features: _Rows

    @property
    def images(self) -> np.ndarray:
        return self.features.images


def _group(images: np.ndarray, counts: np.ndarray, offsets: np.ndarray, read: ProposalReader,
           device: torch.device) -> _Group:
    images = np.sort(np.asarray(images, np.int64))
    feats, _ = read(images, False)
    rows = np.concatenate([np.arange(offsets[i], offsets[i] + counts[i]) for i in images])
    owner = np.repeat(images, counts[images])
    return _Group(rows.astype(np.int64), owner, _Rows.of(torch.as_tensor(np.asarray(feats, np.float32), device=device), owner))


def evidence_images(image_labels: np.ndarray, counts: np.ndarray, per_class: int, reference: int,
                    priority: np.ndarray | None = None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The reference sample (the first ``reference`` images with proposals in ``priority`` order, image
    order when None) and, per class, the first ``per_class`` images labelled with it."""
    order = np.argsort(priority, kind="stable") if priority is not None else np.arange(len(counts))
    order = order[counts[order] > 0]
    positives = {c: order[image_labels[order, c]][:per_class] for c in range(1, image_labels.shape[1])}
    return order[:reference], {c: v for c, v in positives.items() if len(v)}


def _blocks(counts: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Consecutive image ranges whose proposals number at most ``size`` (or one image, if it has more)."""
    out, start, total = [], 0, 0
    for i, n in enumerate(counts.tolist()):
        if i > start and total + n > size:
            out.append((start, i))
            start, total = i, 0
        total += n
    if start < len(counts):
        out.append((start, len(counts)))
    return out


def _claim_each_label(scores: np.ndarray, labels: np.ndarray, image_index: np.ndarray,
                      image_labels: np.ndarray) -> np.ndarray:
    """Give each image label with no proposal its best proposal that is not the sole holder of another label."""
    labels = labels.copy()
    for i in np.unique(image_index):
        rows = np.flatnonzero(image_index == i)
        for c in np.flatnonzero(image_labels[i, 1:]) + 1:
            if np.any(labels[rows] == c):
                continue
            order = rows[np.argsort(-scores[rows, c])]
            for r in order:
                cur = labels[r]
                if cur == 0 or np.count_nonzero(labels[rows] == cur) > 1:
                    labels[r] = c
                    break
    return labels


def _confidence(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``[q]`` softmax probability of ``labels`` among each row of ``[q, K]`` ``scores`` (-inf: not allowed)."""
    z = scores - scores.max(1, keepdims=True)
    p = np.exp(z)
    return (p[np.arange(len(p)), labels] / p.sum(1)).astype(np.float32)


def _assign(scores: np.ndarray, image_index: np.ndarray, image_labels: np.ndarray, claim: bool) -> np.ndarray:
    labels = scores.argmax(1)
    return _claim_each_label(scores, labels, image_index, image_labels) if claim else labels


def _contrast(q: torch.Tensor, owner: np.ndarray, allowed: np.ndarray, image_labels: np.ndarray, reference: _Group,
              positives: dict[int, _Group], quantile: float) -> np.ndarray:
    """``[q, K]`` class contrast of a block's proposals for their allowed classes (0 elsewhere)."""
    out = np.zeros(allowed.shape, np.float32)
    ref_best = reference.features.best_per_image(q, owner)
    for c in np.flatnonzero(allowed[:, 1:].any(0)) + 1:
        if c not in positives:
            continue
        rows = np.flatnonzero(allowed[:, c])
        pos_best = positives[c].features.similarity(_take(q, rows), owner[rows]).amax(1).cpu().numpy()
        # Reference images are never the proposal's own (labelled ``c``) and all have proposals: all finite.
        neg = ref_best[rows][:, ~image_labels[reference.images, c]]
        # With no image without ``c`` to compare to, the reference is 0.
        neg_q = np.quantile(neg, quantile, axis=1).astype(np.float32) if neg.shape[1] else np.zeros(len(rows), np.float32)
        out[rows, c] = np.where(np.isfinite(pos_best), pos_best - neg_q, 0.0)
    return out


def _take(x: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    return x.index_select(0, torch.as_tensor(rows, device=x.device))


def _seed_banks(labels: np.ndarray, reference: _Group, positives: dict[int, _Group]) -> dict[int, _Rows]:
    """The current seeds of each class among its evidence images; background's among the reference sample."""
    banks = {}
    for c, g in [(0, reference), *positives.items()]:
        keep = np.flatnonzero(labels[g.rows] == c)
        if len(keep):
            feats = g.features.features
            banks[c] = _Rows.of(_take(feats, keep), g.owner[keep])
    return banks


def _relative_evidence(proto: np.ndarray, allowed: np.ndarray, background: bool) -> np.ndarray:
    """Prototype evidence ``[q, K]`` relative to background's seeds (with ``background``), else to the mean of
    the proposal's allowed classes; nan where a class (or what it is compared with) has no seed elsewhere."""
    if background:
        rel = proto - proto[:, :1]
        rel[:, 0] = 0.0
        return rel
    seen = allowed & np.isfinite(proto)
    centre = np.where(seen, proto, 0.0).sum(1, keepdims=True) / np.maximum(seen.sum(1, keepdims=True), 1)
    return np.where(seen.any(1, keepdims=True), proto - centre, np.nan)


def _prototype_similarity(q: torch.Tensor, owner: np.ndarray, allowed: np.ndarray, banks: dict[int, _Rows],
                          top: int) -> np.ndarray:
    """``[q, K]``: mean of the ``top`` best cosines to seeds of each allowed class in *other* images (nan if none)."""
    out = np.full(allowed.shape, np.nan, np.float32)
    for c in np.flatnonzero(allowed.any(0)):
        if c not in banks:
            continue
        rows = np.flatnonzero(allowed[:, c])
        sim = banks[c].similarity(_take(q, rows), owner[rows])
        v = torch.topk(sim, min(top, sim.shape[1]), dim=1).values
        finite = torch.isfinite(v)
        mean = torch.where(finite, v, torch.zeros_like(v)).sum(1) / finite.sum(1).clamp(min=1)
        out[rows, c] = torch.where(finite.any(1), mean, torch.full_like(mean, torch.nan)).cpu().numpy()
    return out


def seed_images(
    read: ProposalReader,
    counts: np.ndarray,
    image_labels: np.ndarray,
    *,
    saliency: bool = False,
    priority: np.ndarray | None = None,
    config: SeedConfig = SeedConfig(),
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> SeedResult:
    """Seed labels for every proposal of a labelled collection, streamed from ``read`` a block at a time.

    Args:
        read: the proposals' features (and saliency) of a list of images.
        counts: ``[I]`` proposals per image; proposal ``p`` of the result is the ``p``-th in image order.
        image_labels: ``[I, K]`` multi-hot image labels; column 0 (background) is ignored.
        saliency: use the foreground prior (``read`` returns it) when ``config.saliency_weight > 0``.
        priority: ``[I]`` order in which images enter the capped evidence groups (image order when None).
        progress: called with the number of proposals of each block scored (once per pass).
    """
    device = resolve_device(device)
    counts = np.asarray(counts, np.int64)
    image_labels = np.asarray(image_labels).astype(bool)
    total = int(counts.sum())
    if total == 0:
        return SeedResult(np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.float32))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ref_images, pos_images = evidence_images(image_labels, counts, config.evidence_per_class,
                                             config.reference_images, priority)
    reference = _group(ref_images, counts, offsets, read, device)
    positives = {c: _group(v, counts, offsets, read, device) for c, v in pos_images.items()}
    use_sal = saliency and config.saliency_weight > 0 and config.background
    blocks = _blocks(counts, config.block)

    def block_inputs(a: int, b: int, sal: bool):
        feats, s = read(np.arange(a, b), sal)
        owner = np.repeat(np.arange(a, b), counts[a:b])
        allowed = image_labels[owner]
        # Without background, only a proposal of an image without labels may take it.
        allowed[:, 0] = True if config.background else ~allowed[:, 1:].any(1)
        return torch.as_tensor(np.asarray(feats, np.float32), device=device), s, owner, allowed

    labels = np.zeros(total, np.int64)
    chosen = np.zeros(total, np.float32)
    confidence = np.zeros(total, np.float32)
    base_values = []  # the base scores of each block's allowed (proposal, class) pairs, row-major
    for a, b in blocks:
        q, sal, owner, allowed = block_inputs(a, b, use_sal)
        scores = _contrast(q, owner, allowed, image_labels, reference, positives, config.quantile) / config.contrast_scale
        if use_sal:
            s = np.clip(np.asarray(sal, np.float32), 1e-3, 1 - 1e-3)
            scores += config.saliency_weight * np.log(s / (1 - s))[:, None]
        scores[:, 0] = config.background_bias
        base = np.where(allowed, scores, -np.inf).astype(np.float32)
        base_values.append(base[allowed])
        lo, hi = offsets[a], offsets[b]
        labels[lo:hi] = _assign(base, owner, image_labels, config.claim_labels)
        chosen[lo:hi] = base[np.arange(len(base)), labels[lo:hi]]
        confidence[lo:hi] = _confidence(base, labels[lo:hi])
        if progress:
            progress(int(hi - lo))

    for _ in range(config.rounds):
        banks = _seed_banks(labels, reference, positives)
        new = np.empty_like(labels)
        for (a, b), values in zip(blocks, base_values):
            q, _, owner, allowed = block_inputs(a, b, False)
            base = np.full(allowed.shape, -np.inf, np.float32)
            base[allowed] = values
            proto = _prototype_similarity(q, owner, allowed, banks, config.top_per_class)
            rel = _relative_evidence(proto, allowed, config.background) / config.temperature
            final = base + config.refine_weight * np.nan_to_num(rel, nan=0.0)
            final = np.where(allowed, final, -np.inf).astype(np.float32)
            lo, hi = offsets[a], offsets[b]
            new[lo:hi] = _assign(final, owner, image_labels, config.claim_labels)
            chosen[lo:hi] = final[np.arange(len(final)), new[lo:hi]]
            confidence[lo:hi] = _confidence(final, new[lo:hi])
            if progress:
                progress(int(hi - lo))
        labels = new
    return SeedResult(labels.astype(np.int32), chosen, confidence)


def seed_proposals(
    features: np.ndarray,
    image_index: np.ndarray,
    image_labels: np.ndarray,
    *,
    saliency: np.ndarray | None = None,
    config: SeedConfig = SeedConfig(),
    device: str | torch.device = "cpu",
) -> SeedResult:
    """:func:`seed_images` over proposals held in memory.

    Args:
        features: ``[P, C]`` unit-norm pooled proposal features.
        image_index: ``[P]`` index of each proposal's image (0..I-1).
        image_labels: ``[I, K]`` multi-hot image labels; column 0 (background) is ignored.
        saliency: optional ``[P]`` foreground prior in [0, 1].
    """
    features = np.asarray(features, np.float32)
    image_index = np.asarray(image_index, np.int64)
    order = np.argsort(image_index, kind="stable")
    counts = np.bincount(image_index, minlength=len(image_labels)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    feats = features[order]
    sal = None if saliency is None else np.asarray(saliency, np.float32)[order]

    def read(images: np.ndarray, with_saliency: bool) -> tuple[np.ndarray, np.ndarray | None]:
        rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in images]) if len(images) else np.zeros(0, int)
        return feats[rows], (sal[rows] if with_saliency and sal is not None else None)

    result = seed_images(read, counts, image_labels, saliency=sal is not None, config=config, device=device)
    labels, scores, confidence = (np.empty_like(result.labels), np.empty_like(result.scores),
                                  np.empty_like(result.confidence))
    labels[order], scores[order], confidence[order] = result.labels, result.scores, result.confidence
    return SeedResult(labels, scores, confidence)
