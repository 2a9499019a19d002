import numpy as np
import pytest
import torch
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from maskbank.tasks.embed import IMAGENET_MEAN, IMAGENET_STD, EmbedConfig, FeatureExtractor, FeatureGrid
from maskbank.tasks.geometry import PatchGeometry
from maskbank.tasks.models.backbone import load_backbone

P = 14
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=P, image_size=56)


@pytest.fixture(scope="module")
def tiny_dinov2():
    torch.manual_seed(0)
    return Dinov2Model(Dinov2Config(**TINY)).eval()


def _extractor(model, **kw):
    return FeatureExtractor(model, EmbedConfig(device="cpu", **{"long_side": 56, "layer": -1, **kw}))


@pytest.mark.parametrize(
    "hw, grid",
    [
        ((1, 1), (4, 4)),
        ((56, 56), (4, 4)),
        ((100, 30), (4, 2)),
        ((30, 100), (2, 4)),
        ((7, 500), (1, 4)),
        ((480, 640), (3, 4)),
    ],
)
def test_grid_shape_for_many_sizes(tiny_dinov2, hw, grid):
    out = _extractor(tiny_dinov2)(np.zeros((*hw, 3), np.uint8))
    assert isinstance(out, FeatureGrid)
    assert out.features.shape == (*grid, 32) and out.features.dtype == np.float16
    assert out.geometry == PatchGeometry.for_image(hw, 56, P)
    assert np.isfinite(out.features).all()
    assert out.geometry.to_image(out.features[..., 0].astype(np.float32)).shape == hw


def test_matches_direct_model_call_without_cls(tiny_dinov2):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 90, 3), dtype=np.uint8)  # -> 25 x 56, grid 2 x 4
    fe = _extractor(tiny_dinov2, layer=1)
    out = fe(img)
    x = fe.preprocess(img, out.geometry)
    assert x.shape == (1, 3, 28, 56)
    with torch.no_grad():
        hidden = tiny_dinov2(pixel_values=x, output_hidden_states=True).hidden_states[1][0]
    assert hidden.shape[0] == 1 + 2 * 4
    expected = hidden[1:].reshape(2, 4, 32).numpy().astype(np.float16)
    np.testing.assert_array_equal(out.features, expected)
    np.testing.assert_array_equal(_extractor(tiny_dinov2, layer=-2)(img).features, out.features)


def test_register_tokens_are_dropped():
    torch.manual_seed(0)
    model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=4, **TINY)).eval()
    fe = _extractor(model, layer=2)
    img = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    out = fe(img)
    with torch.no_grad():
        hidden = model(pixel_values=fe.preprocess(img, out.geometry), output_hidden_states=True).hidden_states[2][0]
    assert hidden.shape[0] == 1 + 4 + 3 * 4
    np.testing.assert_array_equal(out.features, hidden[5:].reshape(3, 4, 32).numpy().astype(np.float16))


def _mean_red_model():
    """Embedding output (layer 0) = mean normalised red value of each patch in channel 0."""
    model = Dinov2Model(Dinov2Config(**TINY)).eval()
    emb = model.embeddings
    with torch.no_grad():
        emb.position_embeddings.zero_()
        emb.cls_token.zero_()
        proj = emb.patch_embeddings.projection
        proj.weight.zero_()
        proj.bias.zero_()
        proj.weight[0, 0] = 1.0 / (P * P)
    return model


def test_normalisation_padding_and_token_order():
    # 20 x 56 image, red left half: no resize at long side 56; grid 2 x 4; rows 20..27 are padding
    img = np.zeros((20, 56, 3), np.uint8)
    img[:, :28, 0] = 255
    out = _extractor(_mean_red_model(), layer=0)(img)
    red, black = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], (0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    expected = np.array([[red, red, black, black], [red, red, black, black]], np.float32)
    expected[1] *= 6 / 14  # 6 image rows + 8 padding rows (0 in normalised space)
    np.testing.assert_allclose(out.features[..., 0], expected, rtol=2e-3)
    np.testing.assert_array_equal(out.features[..., 1:], 0)
    # mapped back onto the image, the red half stays on the left
    up = out.geometry.to_image(out.features[..., 0].astype(np.float32))
    assert up.shape == (20, 56)
    assert (up[:, :20] > 0).all() and (up[:, 36:] < 0).all()


def test_resize_to_long_side():
    img = np.zeros((200, 112, 3), np.uint8)
    img[:100, :, 0] = 255  # red top half
    out = _extractor(_mean_red_model(), layer=0)(img)  # 200 x 112 -> 56 x 31, grid 4 x 3
    assert out.geometry.resized_hw == (56, 31) and out.features.shape[:2] == (4, 3)
    red = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    np.testing.assert_allclose(out.features[:2, :2, 0], red, rtol=2e-3)
    assert (out.features[2:, :2, 0] < 0).all()


def test_config_and_input_errors(tiny_dinov2):
    with pytest.raises(ValueError, match="layer"):
        _extractor(tiny_dinov2, layer=3)
    with pytest.raises(ValueError, match="layer"):
        _extractor(tiny_dinov2, layer=-4)
    with pytest.raises(ValueError):
        EmbedConfig(long_side=0)
    fe = _extractor(tiny_dinov2)
    for bad in (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), "img"):
        with pytest.raises(ValueError, match="uint8"):
            fe(bad)


def test_bf16_close_to_fp32(tiny_dinov2):
    img = np.random.default_rng(2).integers(0, 256, (60, 60, 3), dtype=np.uint8)
    a = _extractor(tiny_dinov2, layer=2)(img).features.astype(np.float32).reshape(-1, 32)
    b = _extractor(tiny_dinov2, layer=2, bf16=True)(img).features.astype(np.float32).reshape(-1, 32)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99


def test_load_backbone_from_folder(tmp_path, tiny_dinov2):
    tiny_dinov2.save_pretrained(tmp_path / "dino")
    model = load_backbone(tmp_path / "dino")
    assert isinstance(model, Dinov2Model) and not model.training
    assert model.dtype == torch.float32 and not any(p.requires_grad for p in model.parameters())
    img = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_extractor(model)(img).features, _extractor(tiny_dinov2)(img).features)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_backbone(tmp_path / "missing")


def test_saliency_head_output_matches_the_head_on_final_tokens(tiny_dinov2):
    from maskbank.tasks.models.saliency import SaliencyHead

    torch.manual_seed(0)
    head = SaliencyHead(in_dim=TINY["hidden_size"], channels=(8, 8, 8)).eval()
    fx = FeatureExtractor(tiny_dinov2, EmbedConfig(long_side=60, layer=-1, device="cpu"), saliency_head=head)
    image = np.random.default_rng(0).integers(0, 255, (45, 60, 3), dtype=np.uint8)
    grid = fx(image)
    g = grid.geometry
    assert grid.saliency.shape == g.resized_hw and grid.saliency.dtype == np.float16
    with torch.no_grad():
        out = tiny_dinov2(pixel_values=fx.preprocess(image, g))
        gh, gw = g.grid_hw
        expected = head(out.last_hidden_state[:, 1:], (gh, gw), g.padded_hw)[0, 0, : g.resized_hw[0], : g.resized_hw[1]]
    np.testing.assert_allclose(grid.saliency.astype(np.float32), expected.numpy(), atol=2e-3)
    assert FeatureExtractor(tiny_dinov2, EmbedConfig(long_side=60, layer=-1, device="cpu"))(image).saliency is None


def test_a_batch_gives_each_image_its_own_grid(tiny_dinov2):
    """Images of equal padded size share a forward pass, others get their own; every grid (and saliency map)
    equals the image's own to float rounding, in the order of the images."""
    from maskbank.tasks.models.saliency import SaliencyHead

    torch.manual_seed(0)
    head = SaliencyHead(in_dim=TINY["hidden_size"], channels=(8, 8, 8)).eval()
    fx = FeatureExtractor(tiny_dinov2, EmbedConfig(long_side=56, layer=-1, device="cpu"), saliency_head=head)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, hw + (3,), dtype=np.uint8) for hw in ((42, 56), (56, 20), (40, 56), (1, 1))]
    batched = fx.batch(images)
    assert [g.geometry for g in batched] == [fx.geometry(im.shape[:2]) for im in images]
    assert batched[0].geometry.padded_hw == batched[2].geometry.padded_hw != batched[1].geometry.padded_hw
    for image, got in zip(images, batched):
        alone = fx(image)
        np.testing.assert_allclose(got.features.astype(np.float32), alone.features.astype(np.float32), atol=2e-3)
        np.testing.assert_allclose(got.saliency.astype(np.float32), alone.saliency.astype(np.float32), atol=2e-3)
    assert fx.batch([]) == []


def test_flow_defaults_are_the_extractor_defaults():
    from maskbank.flows.params import EmbedParams

    config, params = EmbedConfig(), EmbedParams()
    assert (params.layer, params.long_side, params.bf16) == (config.layer, config.long_side, config.bf16)
