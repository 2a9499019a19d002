"""Seeds from a text-image model: proposals classified against the text embeddings of the class names, as
TUSS seeds its masks (its zero-shot step), and image labels for images that have none (a class is present
where one of the image's proposals is taken for it).

The classifier: each class name is put into every prompt template, the text embeddings of a name's prompts are
averaged and normalised. Stuff words that no class names (a "dust bin": sky, wall, road …) stand for the
background. A proposal's logits are ``temperature`` × cosine against every class and dust-bin word; their
softmax over that whole vocabulary is kept for the image's labelled classes only. With a background class the
background score is ``(1 − max over the kept classes) ** background_power`` (1: a kept class needs more than
half the probability to win); without one the kept classes are renormalised. Each proposal takes the class of
highest score, the score being its confidence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from maskbank.tasks.pooling import l2_normalize

TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a good photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "a photo of a {} in the scene.",
)
"""Prompt templates a class name is put into."""

DUST_BIN = ("ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea",
            "railway", "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock",
            "street", "valley", "bridge", "sign")
"""TUSS's background words for PASCAL VOC; a word that is one of the dataset's classes is left out."""


@dataclass(frozen=True)
class ClipSeedConfig:
    """Settings of :func:`clip_seed_labels`: ``temperature`` scales the cosines (CLIP's 100), and
    ``background_power`` shapes the background score (TUSS tunes it in 0.2–5; 1 is a 0.5 threshold)."""

    temperature: float = 100.0
    background_power: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature <= 0 or self.background_power <= 0:
            raise ValueError("temperature and background_power must be positive")


def dust_bin(class_names: Sequence[str], words: Sequence[str] = DUST_BIN) -> list[str]:
    """The background words that are not among ``class_names`` (case and surrounding space ignored)."""
    taken = {n.strip().lower() for n in class_names}
    return [w for w in words if w.strip().lower() not in taken]


@torch.no_grad()
def text_embeddings(encode: Callable[[list[str]], torch.Tensor], names: Sequence[str],
                    templates: Sequence[str] = TEMPLATES) -> np.ndarray:
    """``float32[len(names), D]`` unit text embeddings: each name's prompts encoded by ``encode`` (a list of
    strings to ``[n, D]`` embeddings, e.g. a ``CLIPModel``'s ``get_text_features`` behind its tokenizer),
    normalised, averaged and normalised again."""
    if not templates:
        raise ValueError("templates must not be empty")
    out = []
    for name in names:
        e = encode([t.format(name) for t in templates]).float()
        e = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        out.append(e.mean(0).cpu().numpy())
    return l2_normalize(np.array(out, np.float32).reshape(len(names), -1))


def clip_seed_labels(embeddings: np.ndarray, image_index: np.ndarray, image_labels: np.ndarray,
                     class_text: np.ndarray, dust_bin_text: np.ndarray, background: bool = True,
                     config: ClipSeedConfig = ClipSeedConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Labels and confidences ``(int32[P], float32[P])`` of ``P`` proposals.

    Args:
        embeddings: ``[P, D]`` unit proposal embeddings (e.g. :class:`~maskbank.tasks.clip_masks.ClipMaskEmbedder`).
        image_index: ``[P]`` each proposal's image row in ``image_labels``.
        image_labels: ``bool[I, K]`` image labels over the class list (column 0: background, ignored).
        class_text: ``[K, D]`` unit text embeddings of the class names (row 0 unused).
        dust_bin_text: ``[B, D]`` unit text embeddings of the background words.
        background: whether the class list has a background class (if not, every proposal of a labelled
            image takes one of its labels).
    """
    image_index = np.asarray(image_index)
    image_labels = np.asarray(image_labels, bool)
    logits, prob = _vocabulary(embeddings, class_text, dust_bin_text, config.temperature)
    k = class_text.shape[0]
    scores = np.zeros((len(embeddings), k), np.float32)
    allowed = image_labels[image_index].copy()
    allowed[:, 0] = False
    scores[:, 1:] = np.where(allowed[:, 1:], prob[:, : k - 1], 0.0)
    if background:
        scores[:, 0] = (1.0 - scores[:, 1:].max(axis=1, initial=0.0)) ** config.background_power
    else:  # the softmax over the kept classes alone, from the logits (their probabilities may underflow)
        kept = np.where(allowed[:, 1:], logits[:, : k - 1], -np.inf)
        top = kept.max(axis=1, keepdims=True)
        none = ~np.isfinite(top[:, 0])
        e = np.exp(kept - np.where(none[:, None], 0.0, top))
        scores[:, 1:] = e / np.maximum(e.sum(axis=1, keepdims=True), 1e-30)
        scores[none, 0] = 1.0  # an image without labels: nothing to choose from
    labels = scores.argmax(axis=1).astype(np.int32)
    return labels, scores[np.arange(len(labels)), labels].astype(np.float32)


def _vocabulary(embeddings: np.ndarray, class_text: np.ndarray, dust_bin_text: np.ndarray,
                temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Logits (less each row's maximum) and softmax of ``[P, D]`` embeddings over the classes (row 0 of
    ``class_text`` left out) then the dust-bin words."""
    vocab = np.concatenate([class_text[1:], dust_bin_text]).astype(np.float32)
    logits = temperature * np.asarray(embeddings, np.float32) @ vocab.T
    logits -= logits.max(axis=1, keepdims=True, initial=-np.inf)
    prob = np.exp(logits)
    prob /= np.maximum(prob.sum(axis=1, keepdims=True), 1e-30)
    return logits, prob


def image_class_scores(embeddings: np.ndarray, image_index: np.ndarray, n_images: int, class_text: np.ndarray,
                       dust_bin_text: np.ndarray, config: ClipSeedConfig = ClipSeedConfig()) -> np.ndarray:
    """``float32[n_images, K]``: how present each class is in each image, the highest probability any of its
    proposals gives the class (over the classes and the dust bin, as seeding scores them); column 0 is 0."""
    _, prob = _vocabulary(embeddings, class_text, dust_bin_text, config.temperature)
    scores = np.zeros((n_images, class_text.shape[0]), np.float32)
    np.maximum.at(scores[:, 1:], np.asarray(image_index), prob[:, : class_text.shape[0] - 1])
    return scores


def zero_shot_image_labels(scores: np.ndarray, top_k: int | None = None,
                           threshold: float | None = None) -> list[list[int]]:
    """Each image's predicted labels (class indices, background never) from ``[I, K]`` class ``scores``
    (:func:`image_class_scores`): the classes scoring at least ``threshold`` (at least the best one), or the
    ``top_k`` best; exactly one of the two."""
    if (top_k is None) == (threshold is None):
        raise ValueError("give exactly one of top_k and threshold")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    classes = np.asarray(scores, np.float32)[:, 1:]
    order = np.argsort(-classes, axis=1, kind="stable")
    out = []
    for row, ranked in zip(classes, order):
        keep = ranked[:top_k] if top_k is not None else [c for c in ranked if row[c] >= threshold] or ranked[:1]
        out.append(sorted(int(c) + 1 for c in keep))
    return out
