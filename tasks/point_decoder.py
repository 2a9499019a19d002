"""SAM's mask decoder rewritten for many single-point prompts on one image.

Meta's ``MaskDecoder`` copies the image embedding once per prompt and runs every projection of the
two-way transformer over all image tokens of every prompt. :class:`PointDecoder` computes the same
function with the algebra rearranged:

- the first block's image-side projections do not depend on the prompt and are computed once per image;
- a projection of the image tokens that meets only the 7 prompt tokens (1 IoU, 4 mask, 2 point tokens)
  is folded into those tokens: ``softmax(q . (W_k x + b_k)) (W_v x + b_v)`` is computed as
  ``(softmax((W_k^T q) . x) x) W_v^T + b_v`` (``q . b_k`` is constant along the softmax, whose weights
  sum to 1), so products over ``tokens x channels`` replace products over ``image tokens x channels``;
- the mask upscaling (two stride-2 transposed convolutions) runs as matrix products, and only for
  prompts the caller keeps (predicted IoU comes from the transformer alone).

With float32 weights it reproduces ``MaskDecoder`` to float rounding (see the tests).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock

N_OUTPUT_TOKENS = 5  # IoU token + 4 mask tokens


class _ImageTensors(NamedTuple):
    """What every prompt shares: image keys and positions ``[L, C]``, block 1's projections of them."""

    keys: torch.Tensor
    pe: torch.Tensor
    k0: torch.Tensor  # [heads, L, d]
    v0: torch.Tensor  # [heads, L, d]
    q0: torch.Tensor  # [heads * d, L]


@dataclass
class DecodedPrompts:
    """Transformer outputs of a batch of prompts: ``tokens[B, 7, C]`` and image ``keys[B, L, C]``."""

    tokens: torch.Tensor
    keys: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]


def _heads(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """A projection's ``[heads * d, C]`` weight as ``[heads, d, C]``."""
    return weight.view(num_heads, weight.shape[0] // num_heads, weight.shape[1])


def _token_to_image(attn: Attention, tokens: torch.Tensor, keys: torch.Tensor, keys_pe: torch.Tensor) -> torch.Tensor:
    """``attn(q=tokens, k=keys_pe, v=keys)`` with per-prompt keys, the key and value projections folded."""
    b, n, _ = tokens.shape
    h = attn.num_heads
    q = attn.q_proj(tokens).view(b, n, h, -1)
    d = q.shape[-1]
    # scores = (q W_k) keys_pe^T; q b_k is the same for every image token and cancels in the softmax
    qk = torch.einsum("bnhe,hec->bhnc", q / math.sqrt(d), _heads(attn.k_proj.weight, h)).reshape(b, h * n, -1)
    weights = torch.softmax(torch.bmm(qk, keys_pe.transpose(1, 2)), dim=-1)
    # rows of the softmax sum to 1: weights (keys W_v + b_v) = (weights keys) W_v + b_v
    pooled = torch.bmm(weights, keys).view(b, h, n, -1)
    out = torch.einsum("bhnc,hec->bnhe", pooled, _heads(attn.v_proj.weight, h)) + attn.v_proj.bias.view(h, d)
    return attn.out_proj(out.reshape(b, n, h * d))


def _image_to_token(
    attn: Attention,
    image_q: torch.Tensor,
    tokens_pe: torch.Tensor,
    tokens: torch.Tensor,
    residual: torch.Tensor,
    projected: bool,
) -> torch.Tensor:
    """``residual + attn(q=image_q, k=tokens_pe, v=tokens)``, ``[B, L, C]``.

    ``image_q`` is ``[internal, L]``, projected and shared by all prompts (``projected``), or per-prompt
    ``[B, L, C]``, whose query projection is then folded into the 7 keys. Scores are laid out
    ``[B, heads, 7, L]`` so the softmax over the 7 keys runs along a strided axis, not a 7-wide last one.
    """
    b, n, _ = tokens.shape
    h = attn.num_heads
    k = attn.k_proj(tokens_pe).view(b, n, h, -1)
    d = k.shape[-1]
    k = k / math.sqrt(d)
    if projected:
        # block-diagonal keys: one product gives the scores of every head
        eye = torch.eye(h, dtype=k.dtype, device=k.device)
        keys = torch.einsum("bnhe,hg->bhnge", k, eye).reshape(b, h * n, h * d)
        scores = torch.matmul(keys, image_q)
    else:
        folded = torch.einsum("bnhe,hec->bhnc", k, _heads(attn.q_proj.weight, h)).reshape(b, h * n, -1)
        bias = torch.einsum("bnhe,he->bhn", k, attn.q_proj.bias.view(h, d)).reshape(b, h * n, 1)
        scores = torch.baddbmm(bias, folded, image_q.transpose(1, 2))
    weights = torch.softmax(scores.view(b, h, n, -1), dim=2).view(b, h * n, -1)
    # out_proj folded into the values: [B, heads * n, C]
    v = attn.v_proj(tokens).view(b, n, h, d)
    values = torch.einsum("bnhe,che->bhnc", v, attn.out_proj.weight.view(-1, h, d)).reshape(b, h * n, -1)
    # each head's weights sum to 1, so all h * n weights of an image token sum to h: the bias rides on the values
    values = values + attn.out_proj.bias / h
    return torch.baddbmm(residual, weights.transpose(1, 2), values)


class PointDecoder:
    """Decode single positive point prompts on one image with ``sam``'s prompt encoder and mask decoder.

    Call :meth:`set_image` with the encoder's embedding, then :meth:`decode` batches of points (in the
    encoder's input frame, like ``SamPredictor.predict_torch``), :meth:`iou` for the multimask IoU
    predictions and :meth:`masks` for the low-resolution multimask logits of the prompts to keep.
    """

    def __init__(self, sam: Sam, dtype: torch.dtype | None = None) -> None:
        decoder = sam.mask_decoder
        if dtype is not None and dtype != decoder.iou_token.weight.dtype:
            decoder = copy.deepcopy(decoder).to(dtype)
        transformer = decoder.transformer
        if transformer.depth != 2 or not transformer.layers[0].skip_first_layer_pe:
            raise ValueError("PointDecoder supports SAM's two-way transformer of depth 2")
        if decoder.num_mask_tokens != 4:
            raise ValueError(f"PointDecoder expects 3 multimask outputs, got {decoder.num_multimask_outputs}")
        self.sam = sam
        self.dtype = decoder.iou_token.weight.dtype
        self.decoder = decoder
        self.transformer = transformer
        self._image: _ImageTensors | None = None

    @torch.inference_mode()
    def set_image(self, embedding: torch.Tensor) -> None:
        """Precompute what all prompts share from the image embedding ``[1, C, h, w]``."""
        if embedding.ndim != 4 or embedding.shape[0] != 1:
            raise ValueError(f"embedding must be [1, C, h, w], got {tuple(embedding.shape)}")
        pe_module = self.sam.prompt_encoder
        if tuple(embedding.shape[-2:]) != tuple(pe_module.image_embedding_size):
            raise ValueError(f"embedding grid {tuple(embedding.shape[-2:])} != {pe_module.image_embedding_size}")
        no_mask = pe_module.no_mask_embed.weight.reshape(1, -1, 1, 1)
        keys = (embedding.float() + no_mask).to(self.dtype).flatten(2)[0].T.contiguous()  # [L, C]
        pe = pe_module.get_dense_pe().to(self.dtype).flatten(2)[0].T.contiguous()
        first: TwoWayAttentionBlock = self.transformer.layers[0]
        cross = first.cross_attn_token_to_image
        h = cross.num_heads
        k0 = cross.k_proj(keys + pe)
        v0 = cross.v_proj(keys)
        d = k0.shape[-1] // h
        back = first.cross_attn_image_to_token
        q0 = back.q_proj(keys + pe).T.contiguous()
        self._image = _ImageTensors(
            keys,
            pe,
            k0.view(-1, h, d).transpose(0, 1).contiguous(),
            v0.view(-1, h, d).transpose(0, 1).contiguous(),
            q0,
        )

    def reset_image(self) -> None:
        """Drop the image's precomputed tensors."""
        self._image = None

    @torch.inference_mode()
    def decode(self, points: torch.Tensor) -> DecodedPrompts:
        """Run the transformer for one positive point per prompt, ``points[B, 2]`` as (x, y)."""
        if self._image is None:
            raise RuntimeError("call set_image before decode")
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"points must be [B, 2], got {tuple(points.shape)}")
        keys, pe, k0, v0, q0 = self._image
        labels = torch.ones(points.shape[0], 1, dtype=torch.int, device=points.device)
        sparse, _ = self.sam.prompt_encoder(points=(points[:, None, :].float(), labels), boxes=None, masks=None)
        out_tokens = torch.cat([self.decoder.iou_token.weight, self.decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.expand(sparse.shape[0], -1, -1), sparse.to(self.dtype)], dim=1)
        b, n, _ = tokens.shape
        first, second = self.transformer.layers

        # block 1: image side shared by all prompts
        queries = first.norm1(first.self_attn(q=tokens, k=tokens, v=tokens))
        cross = first.cross_attn_token_to_image
        h = cross.num_heads
        q = cross.q_proj(queries + tokens).view(b * n, h, -1).transpose(0, 1)
        attn = F.scaled_dot_product_attention(q, k0, v0)  # [heads, B * n, d]
        queries = first.norm2(queries + cross.out_proj(attn.transpose(0, 1).reshape(b, n, -1)))
        queries = first.norm3(queries + first.mlp(queries))
        keys = first.norm4(
            _image_to_token(first.cross_attn_image_to_token, q0, queries + tokens, queries, keys, projected=True)
        )

        # block 2 and the final attention: per-prompt image keys
        q = queries + tokens
        queries = second.norm1(queries + second.self_attn(q=q, k=q, v=queries))
        keys_pe = keys + pe
        attn = _token_to_image(second.cross_attn_token_to_image, queries + tokens, keys, keys_pe)
        queries = second.norm2(queries + attn)
        queries = second.norm3(queries + second.mlp(queries))
        keys = second.norm4(
            _image_to_token(second.cross_attn_image_to_token, keys_pe, queries + tokens, queries, keys, projected=False)
        )
        final = _token_to_image(self.transformer.final_attn_token_to_image, queries + tokens, keys, keys + pe)
        queries = self.transformer.norm_final_attn(queries + final)
        return DecodedPrompts(tokens=queries, keys=keys)

    @torch.inference_mode()
    def iou(self, decoded: DecodedPrompts) -> torch.Tensor:
        """Predicted IoU of the 3 multimask outputs, ``float32[B, 3]``."""
        return self.decoder.iou_prediction_head(decoded.tokens[:, 0]).float()[:, 1:]

    @torch.inference_mode()
    def masks(self, decoded: DecodedPrompts, keep: torch.Tensor) -> torch.Tensor:
        """Low-resolution logits of the 3 multimask outputs of prompts ``keep``: ``[K, 3, 4h, 4w]``."""
        keys = decoded.keys[keep]
        mask_tokens = decoded.tokens[keep, 2:N_OUTPUT_TOKENS]
        k = keys.shape[0]
        gh, gw = self.sam.prompt_encoder.image_embedding_size
        if k == 0:
            return keys.new_zeros(0, 3, 4 * gh, 4 * gw)
        up1, norm, act1, up2, act2 = self.decoder.output_upscaling
        hyper = torch.stack(
            [mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.decoder.output_hypernetworks_mlps[1:])], dim=1
        )
        # a stride-2 2x2 transposed convolution maps each pixel to 2x2 pixels: [C] -> [2, 2, C_out]
        w1 = up1.weight.permute(0, 2, 3, 1).reshape(up1.weight.shape[0], -1)
        x = torch.addmm(up1.bias.repeat(4), keys.reshape(-1, keys.shape[-1]), w1)
        x = act1(F.layer_norm(x.view(-1, up1.out_channels), (up1.out_channels,), norm.weight, norm.bias, norm.eps))
        w2 = up2.weight.permute(0, 2, 3, 1).reshape(up2.weight.shape[0], -1)
        x = act2(torch.addmm(up2.bias.repeat(4), x, w2))
        # x: [K * h * w * 2 * 2 * 2 * 2, C_out2] in (k, i, j, ki, kj, ki2, kj2) order
        x = x.view(k, -1, up2.out_channels)
        logits = torch.bmm(x, hyper.transpose(1, 2))  # [K, h*w*16, 3]
        logits = logits.view(k, gh, gw, 2, 2, 2, 2, 3).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return logits.reshape(k, 3, 4 * gh, 4 * gw)
