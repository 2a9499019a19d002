"""Mask-aware attention on a tiny random DINOv2: which tokens belong to which proposal, the bias they make, and
what a biased block sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Dinov2Config, Dinov2Model

from maskbank.tasks.embed import EmbedConfig, FeatureExtractor
from maskbank.tasks.mask_attention import attention_bias, check_backbone, masked_features, token_membership
from maskbank.tasks.pooling import mask_weights

PATCH = 4


def _extractor(layers: int = 2, layer: int = -1, attention: str = "eager") -> FeatureExtractor:
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                          patch_size=PATCH, image_size=32, attn_implementation=attention)
    return FeatureExtractor(Dinov2Model(config), EmbedConfig(layer=layer, long_side=32, device="cpu"))


def _masked(fx: FeatureExtractor, image: np.ndarray, masks: np.ndarray, bias: float) -> np.ndarray:
    """The mask-attention features of ``image`` with ``masks`` as its proposals."""
    return masked_features(fx, image, mask_weights(fx.geometry(image.shape[:2]), masks), bias)


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def test_a_token_belongs_to_the_proposals_that_cover_half_its_cell():
    weights = np.zeros((4, 2, 3), np.float32)
    weights[0] = [[1, 0.5, 0.49], [0, 0, 0]]
    weights[1, 1, 2] = 0.2  # covers no cell by half: owns its most covered cell
    weights[1, 0, 0] = 0.1
    weights[2] = 0.75
    members = token_membership(weights)
    assert members.shape == (4, 6) and members.dtype == bool
    assert members[0].tolist() == [True, True, False, False, False, False]
    assert members[1].tolist() == [False, False, False, False, False, True]
    assert members[2].all() and not members[3].any()  # an empty proposal owns nothing
    assert token_membership(np.zeros((0, 2, 3))).shape == (0, 6)


def test_an_image_without_proposals_has_a_grid_too():
    fx = _extractor()
    grid = _masked(fx, _image(), np.zeros((0, 24, 32), bool), -10.0)
    assert grid.shape == (6, 8, 32) and np.isfinite(grid).all()


def test_the_bias_is_zero_between_tokens_of_a_common_proposal_and_for_prefix_tokens():
    members = np.array([[1, 1, 0, 0], [0, 1, 1, 0]], bool)  # token 3 belongs to no proposal
    bias = attention_bias(members, n_prefix=1, bias=-4.0).numpy()
    assert bias.shape == (5, 5)
    assert (bias[0] == 0).all() and (bias[:, 0] == 0).all() and (np.diag(bias) == 0).all()
    patch = bias[1:, 1:]
    expected = np.array([[0, 0, -4, -4], [0, 0, 0, -4], [-4, 0, 0, -4], [-4, -4, -4, 0]], np.float32)
    np.testing.assert_array_equal(patch, expected)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_no_bias_gives_the_plain_features(attention):
    fx = _extractor(layers=3, layer=2, attention=attention)
    image = _image()
    masks = np.zeros((2, 24, 32), bool)
    masks[0, :12, :16] = True
    masks[1, 12:] = True
    plain = fx(image).features.astype(np.float32)
    again = _masked(fx, image, masks, 0.0)
    assert again.shape == plain.shape == (6, 8, 32)
    tolerance = 2e-3 * np.abs(plain).max()  # the plain grid is float16
    np.testing.assert_allclose(again, plain, atol=tolerance)
    assert np.abs(_masked(fx, image, masks, -4.0) - plain).max() > 10 * tolerance


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_tokens_outside_a_proposal_get_no_attention_from_it(attention):
    """One block on the patch embeddings (each token's input depends on its own cell alone): with a bias of
    -1e4 the tokens of a proposal do not change when everything outside it does; with no bias they do."""
    fx = _extractor(layers=1, layer=1, attention=attention)
    image = _image()
    masks = np.zeros((2, 24, 32), bool)
    masks[0, :8, :8] = True  # tokens (0..1, 0..1)
    masks[1, 8:, :] = True
    other = image.copy()
    other[8:] = _image(1)[8:]
    other[:8, 8:] = _image(1)[:8, 8:]
    hard = [_masked(fx, im, masks, -1e4) for im in (image, other)]
    soft = [_masked(fx, im, masks, 0.0) for im in (image, other)]
    np.testing.assert_allclose(hard[0][:2, :2], hard[1][:2, :2], atol=1e-5)
    assert np.abs(soft[0][:2, :2] - soft[1][:2, :2]).max() > 1e-3  # 100 times the tolerance above
    assert np.abs(hard[0][2:] - hard[1][2:]).max() > 1e-2  # the changed region changed


def test_a_proposal_without_a_whole_token_still_sees_its_own_cell():
    fx = _extractor(layers=1, layer=1)
    image = _image()
    masks = np.zeros((1, 24, 32), bool)
    masks[0, 1:3, 1:3] = True  # a quarter of token (0, 0)
    other = image.copy()
    other[4:] = _image(1)[4:]
    a, b = (_masked(fx, im, masks, -1e4) for im in (image, other))
    np.testing.assert_allclose(a[0, 0], b[0, 0], atol=1e-5)


def test_what_mask_attention_cannot_apply_to_is_refused():
    with pytest.raises(ValueError, match="embedding output"):
        check_backbone(_extractor(layers=2, layer=0))

    class NotAViT(torch.nn.Module):
        config = Dinov2Config(num_hidden_layers=2)

    fx = _extractor()
    fx.model = NotAViT()
    with pytest.raises(ValueError, match="needs a ViT backbone whose blocks take an attention mask.*pool.mask_attention to false"):
        check_backbone(fx)


def _mixing_backbone(mixing: float = 100.0) -> FeatureExtractor:
    """A one-block DINOv2 built by hand: a token is its cell's mean colour, and the block adds ``mixing`` times
    the mean (layer-normed) colour of the tokens it attends to, uniformly (no query or key weights, no MLP).
    Unbiased, every token of an image is pulled to the image's mean colour, as a deep backbone's context
    pulls a boat's tokens towards its water."""
    config = Dinov2Config(hidden_size=3, num_hidden_layers=1, num_attention_heads=1, intermediate_size=4,
                          patch_size=PATCH, image_size=16, attn_implementation="eager")
    model = Dinov2Model(config).eval()
    mean, std = torch.tensor(EmbedConfig.mean), torch.tensor(EmbedConfig.std)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        conv = model.embeddings.patch_embeddings.projection
        for c in range(3):  # undo the normalisation and average the cell: the mean colour in [0, 1]
            conv.weight[c, c] = std[c] / PATCH**2
        conv.bias.copy_(mean)
        block = model.encoder.layer[0]
        block.norm1.weight.fill_(1.0)
        block.norm2.weight.fill_(1.0)
        block.attention.v_proj.weight.copy_(torch.eye(3))
        block.attention.o_proj.weight.copy_(mixing * torch.eye(3))
        block.layer_scale1.lambda1.fill_(1.0)
    return FeatureExtractor(model, EmbedConfig(layer=1, long_side=16, device="cpu"))


def test_mask_attention_gives_each_proposal_the_feature_of_its_own_region():
    """Boats only ever on water, cows only on grass, objects of 1 to 9 of an image's 16 cells. With the context
    mixed in, an object's pooled feature is its image's, mostly its surroundings'; with mask attention it is
    the feature its class has alone (that of an image of that class only). Each proposal takes the nearest of
    its image's labels' own features: right for every proposal with mask attention, far from it without, where
    chance is one in two."""
    from maskbank.tasks.pooling import pool_masks

    colours = {1: (0.1, 0.2, 0.9), 2: (0.9, 0.1, 0.1), 3: (0.1, 0.8, 0.2), 4: (0.7, 0.6, 0.1)}  # water, boat, grass, cow
    fx = _mixing_backbone()
    geometry = fx.geometry((16, 16))
    everywhere = np.ones((1, 16, 16), bool)
    alone = {c: pool_masks(fx(np.full((16, 16, 3), np.uint8(np.array(rgb) * 255))).features, geometry, everywhere)[0]
             for c, rgb in colours.items()}
    rng = np.random.default_rng(0)
    right = {"plain": [], "masked": []}
    for classes in [(1, 2)] * 8 + [(3, 4)] * 8:
        h, w = rng.integers(1, 4, 2)
        y, x = rng.integers(0, 5 - h), rng.integers(0, 5 - w)
        region = np.zeros((16, 16), int)
        region[y * PATCH : (y + h) * PATCH, x * PATCH : (x + w) * PATCH] = 1
        image = np.stack([np.array(colours[c]) for c in classes])[region]
        image = (np.clip(image + 0.03 * rng.standard_normal(image.shape), 0, 1) * 255).astype(np.uint8)
        masks = np.stack([region == 0, region == 1])
        own = np.stack([alone[c] for c in classes])
        for name, features in (("plain", fx(image).features), ("masked", _masked(fx, image, masks, -1e4))):
            nearest = (pool_masks(features, geometry, masks) @ own.T).argmax(axis=1)
            right[name] += list(nearest == [0, 1])
    accuracy = {name: float(np.mean(r)) for name, r in right.items()}
    assert accuracy["masked"] == 1.0 and accuracy["plain"] <= 0.7, accuracy  # chance: 0.5
