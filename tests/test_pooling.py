import numpy as np
import pytest

from maskbank.tasks.geometry import PatchGeometry
from maskbank.tasks.pooling import l2_normalize, mask_means, pool_masks, pool_weights, saliency_at_image, soft_pool


def _features():
    # 2x3 grid, C=2: token (i, j) = [i + 1, j]
    grid = np.zeros((2, 3, 2), np.float16)
    for i in range(2):
        for j in range(3):
            grid[i, j] = [i + 1, j]
    return grid


def test_soft_pool_weighted_mean_then_unit_norm():
    weights = np.zeros((2, 3), np.float32)
    weights[0, 0] = 1.0  # [1, 0]
    weights[1, 2] = 0.5  # [2, 2]
    mean = (1.0 * np.array([1, 0]) + 0.5 * np.array([2, 2])) / 1.5
    expected = mean / np.linalg.norm(mean)
    out = soft_pool(_features(), weights)
    assert out.dtype == np.float32 and out.shape == (2,)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_soft_pool_tiny_weight_sum_gives_zero():
    weights = np.zeros((2, 3), np.float32)
    weights[0, 1] = 5e-7
    np.testing.assert_array_equal(soft_pool(_features(), weights), [0.0, 0.0])


def test_pool_weights_matches_soft_pool_row_by_row():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 5, 8)).astype(np.float16)
    weights = rng.uniform(size=(3, 4, 5)).astype(np.float32)
    weights[1] = 0
    pooled = pool_weights(features, weights)
    assert pooled.shape == (3, 8)
    for i in range(3):
        np.testing.assert_allclose(pooled[i], soft_pool(features, weights[i]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), [1, 0, 1], rtol=1e-6)


def test_pool_masks_uses_patch_coverage():
    # 8x12 image, patch 4, no resize -> 2x3 grid
    geometry = PatchGeometry.for_image((8, 12), long_side=12, patch_size=4)
    assert geometry.grid_hw == (2, 3)
    masks = np.zeros((3, 8, 12), bool)
    masks[0, 0:4, 0:4] = True  # all of token (0,0)
    masks[0, 4:6, 8:12] = True  # half of token (1,2)
    masks[1, 0:8, 4:8] = True  # column 1: tokens [1,1] and [2,1]
    pooled = pool_masks(_features(), geometry, masks)
    np.testing.assert_allclose(pooled[0], soft_pool(_features(), np.array([[1, 0, 0], [0, 0, 0.5]])), rtol=1e-6)
    np.testing.assert_allclose(pooled[1], l2_normalize(np.array([1.5, 1.0])), rtol=1e-6)
    np.testing.assert_array_equal(pooled[2], [0, 0])


def test_pool_masks_shape_errors():
    geometry = PatchGeometry.for_image((8, 12), long_side=12, patch_size=4)
    with pytest.raises(ValueError):
        pool_masks(_features(), geometry, np.zeros((1, 8, 10), bool))
    with pytest.raises(ValueError):
        pool_masks(np.zeros((3, 3, 2)), geometry, np.zeros((1, 8, 12), bool))
    assert pool_masks(_features(), geometry, np.zeros((0, 8, 12), bool)).shape == (0, 2)


def test_mask_means_of_a_map_per_mask():
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    masks = np.zeros((3, 3, 4), bool)
    masks[0, 0] = True  # 0..3
    masks[1, :, 3] = True  # 3, 7, 11
    means = mask_means(values, masks)
    assert means.dtype == np.float32
    np.testing.assert_allclose(means, [1.5, 7.0, 0.0])  # an empty mask gives 0
    assert mask_means(values, np.zeros((0, 3, 4), bool)).shape == (0,)


def test_saliency_at_image_resamples_to_the_image():
    saliency = np.array([[0.0, 1.0], [1.0, 0.0]], np.float16)
    out = saliency_at_image(saliency, (6, 4))
    assert out.shape == (6, 4) and out.dtype == np.float32
    np.testing.assert_allclose(saliency_at_image(np.full((2, 2), 0.5), (5, 3)), 0.5)
