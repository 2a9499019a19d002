"""DBA-CLIP mask embeddings on a tiny random CLIP: shapes, the isolation the bias gives, and agreement with a
straightforward reference computation of the biased correlative last block."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from maskbank.tasks.clip_masks import ClipMaskConfig, ClipMaskEmbedder

PATCH = 4


def _clip(layers: int = 2) -> CLIPModel:
    torch.manual_seed(0)
    config = CLIPConfig(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": layers,
                       "num_attention_heads": 2, "image_size": 16, "patch_size": PATCH},
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 64, "max_position_embeddings": 16},
        projection_dim=8)
    return CLIPModel(config).eval()


def _embedder(layers: int = 2, **settings) -> ClipMaskEmbedder:
    return ClipMaskEmbedder(_clip(layers), ClipMaskConfig(short_side=16, device="cpu", **settings))


def _image(seed: int = 0, hw=(16, 24)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def _masks(hw=(16, 24)) -> np.ndarray:
    masks = np.zeros((3, *hw), bool)
    masks[0, :8, :8] = True
    masks[1, 8:, :] = True
    return masks  # the third is empty


def test_one_unit_embedding_per_proposal_in_the_text_space():
    embedder = _embedder()
    out = embedder(_image(), _masks())
    assert out.shape == (3, 8) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out[:2], axis=1), 1, rtol=1e-5)
    assert not out[2].any()
    grid, geometry = embedder.patch_embeddings(_image(), _masks())
    assert geometry.grid_hw == (4, 6) and grid.shape == (4, 6, 8)  # short side 16 at 4 px patches


def test_a_proposal_sees_only_itself_under_a_hard_bias():
    """One block on the patch embeddings: with a bias of -1e4 a proposal's embedding does not change when
    everything outside it does; with no bias it does."""
    masks = _masks()
    image, other = _image(0), _image(0).copy()
    other[8:] = _image(1)[8:]
    other[:8, 8:] = _image(1)[:8, 8:]
    hard, free = _embedder(1, bias=-1e4), _embedder(1, bias=0.0)
    np.testing.assert_allclose(hard(image, masks)[0], hard(other, masks)[0], atol=1e-5)
    assert np.abs(free(image, masks)[0] - free(other, masks)[0]).max() > 1e-3
    assert np.abs(hard(image, masks)[1] - hard(other, masks)[1]).max() > 1e-3


def _reference(model: CLIPModel, pixels: np.ndarray, members: np.ndarray, bias: float, weight: float) -> np.ndarray:
    """The biased correlative last block written out token by token and head by head, for a one-block CLIP:
    ``pixels`` the normalised ``[3, H, W]`` input, ``members`` ``bool[N, P]``; the projected patch embeddings."""
    v = model.vision_model
    p = {k: t.detach().double().numpy() for k, t in model.state_dict().items()}
    pre = "vision_model."

    def ln(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + v.config.layer_norm_eps) * p[name + ".weight"] + p[name + ".bias"]

    def linear(x, name, has_bias=True):
        return x @ p[name + ".weight"].T + (p[name + ".bias"] if has_bias else 0)

    conv = p[pre + "embeddings.patch_embedding.weight"]  # [D, 3, P, P]
    _, hp, wp = pixels.shape[0], pixels.shape[1] // PATCH, pixels.shape[2] // PATCH
    patches = [np.einsum("cij,dcij->d", pixels[:, i * PATCH:(i + 1) * PATCH, j * PATCH:(j + 1) * PATCH], conv)
               for i in range(hp) for j in range(wp)]
    x = np.concatenate([p[pre + "embeddings.class_embedding"][None], np.array(patches)])
    with torch.no_grad():
        pos = v.embeddings.interpolate_pos_encoding(torch.zeros(1, len(x), x.shape[1]), hp * PATCH, wp * PATCH)
    x = x + pos[0].double().numpy()
    x = ln(x, pre + "pre_layrnorm")
    layer = pre + "encoder.layers.0."
    h = ln(x, layer + "layer_norm1")
    t, heads = len(x), v.config.num_attention_heads
    shared = lambda a, b: a == 0 or b == 0 or a == b or bool((members[:, a - 1] & members[:, b - 1]).any())
    B = np.array([[0.0 if shared(a, b) else bias for b in range(t)] for a in range(t)])
    out = np.zeros_like(x)
    d = x.shape[1] // heads
    q, k, val = (linear(h, layer + f"self_attn.{n}_proj") for n in ("q", "k", "v"))
    for head in range(heads):
        s = slice(head * d, (head + 1) * d)
        for a in range(t):
            rows = []
            for m in (q, k):
                logits = np.array([m[a, s] @ m[b, s] * d**-0.5 + B[a, b] for b in range(t)])
                e = np.exp(logits - logits.max())
                rows.append(e / e.sum())
            out[a, s] = ((rows[0] + rows[1]) / 2) @ val[:, s]
    x = x + weight * linear(out, layer + "self_attn.out_proj")
    m = linear(ln(x, layer + "layer_norm2"), layer + "mlp.fc1")
    m = m * (1 / (1 + np.exp(-1.702 * m)))  # quick_gelu, CLIP's activation
    x = x + linear(m, layer + "mlp.fc2")
    return linear(ln(x[1:], pre + "post_layernorm"), "visual_projection", has_bias=False).reshape(hp, wp, -1)


def test_the_embedder_equals_a_token_by_token_reference():
    from maskbank.tasks.mask_attention import token_membership

    embedder = _embedder(1, bias=-4.0, residual_weight=2.0)
    image, masks = _image(hw=(16, 16)), _masks((16, 16))
    grid, geometry = embedder.patch_embeddings(image, masks)
    pixels = embedder._pixels(image, geometry)[0].double().numpy()
    weights = np.stack([geometry.patch_weights(m) for m in masks])
    expected = _reference(embedder.model, pixels, token_membership(weights), -4.0, 2.0)
    np.testing.assert_allclose(grid, expected, rtol=1e-4, atol=1e-5)


def test_bad_settings_and_images_are_refused():
    with pytest.raises(ValueError, match="bias must be <= 0"):
        ClipMaskConfig(bias=1.0)
    from transformers import SiglipConfig, SiglipModel

    siglip = SiglipModel(SiglipConfig(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 16, "patch_size": PATCH},
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 64}))
    with pytest.raises(ValueError, match="need a CLIP model"):
        ClipMaskEmbedder(siglip)
    with pytest.raises(ValueError, match="uint8"):
        _embedder()(np.zeros((16, 16, 3), np.float32), _masks((16, 16)))


def test_clip_seeds_of_a_tiny_model_equal_the_reference_chain():
    """Proposal embeddings by the embedder, then seeds by the seed rule, against the same two steps written out
    (the token-by-token last block, pooled by hand; the proposal-by-proposal rule of test_clip_seed)."""
    from test_clip_seed import _reference as reference_seeds

    from maskbank.tasks.clip_seed import ClipSeedConfig, clip_seed_labels
    from maskbank.tasks.mask_attention import token_membership

    embedder = _embedder(1, bias=-4.0, residual_weight=2.0)
    image, masks = _image(hw=(16, 16)), _masks((16, 16))[:2]
    grid, geometry = embedder.patch_embeddings(image, masks)
    weights = np.stack([geometry.patch_weights(m) for m in masks])
    pixels = embedder._pixels(image, geometry)[0].double().numpy()
    patches = _reference(embedder.model, pixels, token_membership(weights), -4.0, 2.0).reshape(-1, 8)
    pooled = weights.reshape(2, -1) @ patches / weights.reshape(2, -1).sum(1, keepdims=True)
    expected_embeddings = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    got_embeddings = embedder(image, masks)
    np.testing.assert_allclose(got_embeddings, expected_embeddings, rtol=1e-4, atol=1e-5)
    rng = np.random.default_rng(0)
    text = rng.standard_normal((5, 8)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    class_text, bin_text = text[:3], text[3:]
    labels = np.array([[False, True, True]])
    config = ClipSeedConfig(temperature=10.0)
    got = clip_seed_labels(got_embeddings, np.zeros(2, int), labels, class_text, bin_text, config=config)
    want = reference_seeds(expected_embeddings.astype(np.float32), np.zeros(2, int), labels, class_text, bin_text,
                           True, config)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4)
