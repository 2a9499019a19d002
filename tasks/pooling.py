"""Soft-masked feature aggregation: one unit vector per mask from a backbone's token grid.

Each token is weighted by the fraction of its cell the mask covers (``PatchGeometry.patch_weights``);
the feature is ``sum(w * t) / (sum(w) + 1e-8)``, L2-normalised. A mask whose weights sum below 1e-6
gives the zero vector. :func:`mask_means` averages a pixel map (e.g. saliency, resampled to the image
by :func:`saliency_at_image`) inside each mask.
"""

from __future__ import annotations

import cv2
import numpy as np

from maskbank.tasks.geometry import PatchGeometry

WEIGHT_EPS = 1e-8
MIN_WEIGHT = 1e-6


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit norm, float32; rows with norm below ``eps`` become zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.where(norms >= eps, vectors / np.maximum(norms, eps), 0.0).astype(np.float32)


def pool_weights(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Soft-pool ``[Hp, Wp, C]`` features with ``[N, Hp, Wp]`` weights in one matrix product: ``[N, C]`` float32."""
    features = np.asarray(features)
    weights = np.asarray(weights, dtype=np.float32)
    if features.ndim != 3:
        raise ValueError(f"features must be [Hp, Wp, C], got shape {features.shape}")
    if weights.ndim != 3 or weights.shape[1:] != features.shape[:2]:
        raise ValueError(f"weights must be [N, {features.shape[0]}, {features.shape[1]}], got {weights.shape}")
    tokens = features.reshape(-1, features.shape[2]).astype(np.float32)
    flat = weights.reshape(weights.shape[0], tokens.shape[0])
    total = flat.sum(axis=1, keepdims=True)
    pooled = (flat @ tokens) / (total + WEIGHT_EPS)
    pooled[total[:, 0] < MIN_WEIGHT] = 0.0
    return l2_normalize(pooled)


def soft_pool(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Soft-pool ``[Hp, Wp, C]`` features with one ``[Hp, Wp]`` weight map: unit ``[C]`` float32 (or zero)."""
    weights = np.asarray(weights)
    if weights.ndim != 2:
        raise ValueError(f"weights must be [Hp, Wp], got shape {weights.shape}")
    return pool_weights(features, weights[None])[0]


def mask_weights(geometry: PatchGeometry, masks: np.ndarray) -> np.ndarray:
    """``float32[N, Hp, Wp]``: the fraction of each token's cell each of ``[N, H, W]`` image masks covers
    (:meth:`PatchGeometry.patch_weights`), the weights of soft-masked pooling."""
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[1:] != geometry.image_hw:
        raise ValueError(f"masks must be [N, {geometry.image_hw[0]}, {geometry.image_hw[1]}], got {masks.shape}")
    weights = np.zeros((masks.shape[0], *geometry.grid_hw), np.float32)
    for i, mask in enumerate(masks):
        weights[i] = geometry.patch_weights(mask)
    return weights


def pool_masks(features: np.ndarray, geometry: PatchGeometry, masks: np.ndarray) -> np.ndarray:
    """One unit feature per ``[N, H, W]`` image mask, ``[N, C]`` float32; empty masks give zero rows."""
    features = np.asarray(features)
    if features.ndim != 3 or features.shape[:2] != geometry.grid_hw:
        raise ValueError(f"features shape {features.shape} does not match grid {geometry.grid_hw}")
    return pool_weights(features, mask_weights(geometry, masks))


def mask_means(values: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Mean of an ``[H, W]`` map inside each of ``[N, H, W]`` masks (0 for empty masks)."""
    if len(masks) == 0:
        return np.zeros(0, np.float32)
    flat = masks.reshape(len(masks), -1)
    sums = flat @ values.reshape(-1).astype(np.float64)
    return (sums / np.maximum(flat.sum(1), 1)).astype(np.float32)


def saliency_at_image(saliency: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """A saliency map stored at the backbone's resized resolution, resampled to the image."""
    return cv2.resize(saliency.astype(np.float32), (image_hw[1], image_hw[0]), interpolation=cv2.INTER_LINEAR)
