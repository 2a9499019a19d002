"""The dense seeding of maskbank 0.2 (every proposal against every other), kept as the reference that the
streamed, capped seeding must reproduce exactly when no cap is reached."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from maskbank.tasks.seed import SeedConfig, _assign  # the options, assignment and claiming are unchanged


@dataclass
class SeedResult:
    """Per-proposal seed labels (0 = background) and the class scores they were chosen from."""

    labels: np.ndarray  # int32 [P]
    scores: np.ndarray  # float32 [P, K]; -inf where a class is not allowed
    confidence: np.ndarray  # float32 [P]: the chosen label's softmax probability over the scores


def _allowed(image_index: np.ndarray, image_labels: np.ndarray) -> np.ndarray:
    allowed = image_labels[image_index].astype(bool)
    allowed[:, 0] = True
    return allowed


def best_match_per_image(
    features: np.ndarray, image_index: np.ndarray, n_images: int, *, device: str | torch.device = "cpu",
    chunk: int = 4096,
) -> np.ndarray:
    """``[P, I]`` cosine of each proposal's best match in every image (``-inf`` in its own image)."""
    f = torch.as_tensor(features, dtype=torch.float32, device=device)
    img = torch.as_tensor(image_index, dtype=torch.long, device=device)
    out = torch.full((len(f), n_images), -torch.inf, device=device)
    for s in range(0, len(f), chunk):
        sim = f[s : s + chunk] @ f.T  # [q, P]
        best = torch.full((sim.shape[0], n_images), -torch.inf, device=device)
        best.scatter_reduce_(1, img.expand(sim.shape[0], -1), sim, reduce="amax", include_self=True)
        rows = torch.arange(sim.shape[0], device=device)
        best[rows, img[s : s + chunk]] = -torch.inf
        out[s : s + chunk] = best
    return out.cpu().numpy()


def class_contrast(best: np.ndarray, image_labels: np.ndarray, *, quantile: float) -> np.ndarray:
    """``[P, K]`` cross-image evidence that each proposal shows each class.

    For class ``c``: the proposal's best match over the *other* images labelled ``c``, minus the
    ``quantile`` of its best matches over images not labelled ``c``. Background stuff matches both groups
    alike (about 0); an object of ``c`` matches its class's images better than almost any image without
    ``c``. Classes seen in no other image get 0 (no evidence either way). Entries for classes the
    proposal's image lacks are meaningless; callers mask them.
    """
    n_prop, n_img = best.shape
    out = np.zeros((n_prop, image_labels.shape[1]), np.float32)
    finite = np.isfinite(best)
    for c in range(1, image_labels.shape[1]):
        pos = image_labels[:, c]
        if not pos.any():
            continue
        neg = ~pos
        pos_best = np.where(pos[None, :] & finite, best, -np.inf).max(1)
        neg_best = np.where(finite[:, neg], best[:, neg], np.nan)
        neg_q = np.zeros(n_prop, np.float32)
        rows = np.isfinite(neg_best).any(1)  # with no image without ``c`` to compare to, the reference is 0
        if rows.any():
            neg_q[rows] = np.nanquantile(neg_best[rows], quantile, axis=1)
        out[:, c] = np.where(np.isfinite(pos_best), pos_best - neg_q, 0.0)
    return out


def _class_balanced_similarity(
    features: np.ndarray, seeds: np.ndarray, image_index: np.ndarray, n_classes: int, top: int,
    device: str | torch.device,
) -> np.ndarray:
    """``[P, K]``: mean of the ``top`` best cosines to seeds of each class in *other* images (nan if none)."""
    f = torch.as_tensor(features, dtype=torch.float32, device=device)
    img = torch.as_tensor(image_index, device=device)
    lab = torch.as_tensor(seeds, device=device)
    sim = f @ f.T
    sim[img[:, None] == img[None, :]] = -torch.inf
    out = torch.full((len(f), n_classes), torch.nan, device=device)
    for c in torch.unique(lab).tolist():
        cols = torch.nonzero(lab == c).flatten()
        s = sim[:, cols]
        t = min(top, s.shape[1])
        v = torch.topk(s, t, dim=1).values
        finite = torch.isfinite(v)
        mean = torch.where(finite, v, torch.zeros_like(v)).sum(1) / finite.sum(1).clamp(min=1)
        out[:, c] = torch.where(finite.any(1), mean, torch.full_like(mean, torch.nan))
    return out.cpu().numpy()


def seed_proposals(
    features: np.ndarray,
    image_index: np.ndarray,
    image_labels: np.ndarray,
    *,
    saliency: np.ndarray | None = None,
    config: SeedConfig = SeedConfig(),
    device: str | torch.device = "cpu",
) -> SeedResult:
    """Seed labels for every proposal of a labelled collection.

    Args:
        features: ``[P, C]`` unit-norm pooled proposal features.
        image_index: ``[P]`` index of each proposal's image (0..I-1).
        image_labels: ``[I, K]`` multi-hot image labels; column 0 (background) is ignored.
        saliency: optional ``[P]`` foreground prior in [0, 1].
    """
    features = np.asarray(features, np.float32)
    image_index = np.asarray(image_index, np.int64)
    image_labels = np.asarray(image_labels).astype(bool)
    n_img, n_cls = image_labels.shape
    if len(features) == 0:
        return SeedResult(np.zeros(0, np.int32), np.zeros((0, n_cls), np.float32), np.zeros(0, np.float32))
    allowed = _allowed(image_index, image_labels)

    best = best_match_per_image(features, image_index, n_img, device=device)
    scores = class_contrast(best, image_labels, quantile=config.quantile) / config.contrast_scale
    if saliency is not None and config.saliency_weight > 0:
        sal = np.clip(np.asarray(saliency, np.float32), 1e-3, 1 - 1e-3)
        scores += config.saliency_weight * np.log(sal / (1 - sal))[:, None]
    scores[:, 0] = config.background_bias
    base = np.where(allowed, scores, -np.inf).astype(np.float32)
    labels = _assign(base, image_index, image_labels, config.claim_labels)

    final = base
    for _ in range(config.rounds):
        proto = _class_balanced_similarity(features, labels, image_index, n_cls, config.top_per_class, device)
        # Evidence relative to the background seeds; none where a class (or background) has no seed elsewhere.
        rel = (proto - proto[:, :1]) / config.temperature
        rel[:, 0] = 0.0
        final = base + config.refine_weight * np.nan_to_num(rel, nan=0.0)
        final = np.where(allowed, final, -np.inf).astype(np.float32)
        labels = _assign(final, image_index, image_labels, config.claim_labels)
    probability = torch.softmax(torch.as_tensor(final, dtype=torch.float64), dim=1).numpy()
    return SeedResult(labels.astype(np.int32), final, probability[np.arange(len(labels)), labels].astype(np.float32))
