"""Mask-aware attention: features whose proposals see their own regions (TUSS's discrimination bias, DBA).

In the block that produces the features (hidden state ``layer`` is the output of block ``layer``), the
attention logits get an additive bias: 0 between two patch tokens that belong to a common proposal, ``bias``
(negative) between tokens that share none. Prefix tokens (CLS, registers) see every token and every token sees
them; every token sees itself. A proposal's pooled feature then comes from its own region rather than from
whatever context its tokens attended to (a boat's tokens attend to the boat, not the water). TUSS applies the
same bias, -4, in CLIP's last block. The blocks before it run unchanged, so one image takes one forward pass up
to that block, whatever its number of proposals.

A token belongs to a proposal whose mask covers at least :data:`MEMBER_COVER` of its cell, and a proposal that
covers no cell that much owns its most covered token, so every non-empty proposal has one.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from maskbank.tasks.embed import FeatureExtractor
from maskbank.tasks.models.device import autocast

MEMBER_COVER = 0.5
"""Share of a token's cell a proposal must cover for the token to belong to it."""


def token_membership(weights: np.ndarray, min_cover: float = MEMBER_COVER) -> np.ndarray:
    """``bool[N, Hp*Wp]``: which tokens belong to each of ``N`` proposals, from their ``[N, Hp, Wp]`` cell covers
    (:meth:`PatchGeometry.patch_weights`)."""
    weights = np.asarray(weights, np.float32)
    flat = weights.reshape(len(weights), int(np.prod(weights.shape[1:])))
    members = flat >= min_cover
    rows = np.flatnonzero(~members.any(axis=1) & (flat.max(axis=1, initial=0.0) > 0))
    members[rows, flat[rows].argmax(axis=1)] = True
    return members


def attention_bias(members: np.ndarray, n_prefix: int, bias: float) -> torch.Tensor:
    """``float32[T, T]`` additive logits bias over ``T = n_prefix + P`` tokens (prefix tokens first, then the
    ``P`` patch tokens in row-major order) from ``bool[N, P]`` memberships: 0 where the two patch tokens share a
    proposal, on the diagonal and in the prefix rows and columns; ``bias`` elsewhere."""
    m = torch.from_numpy(np.ascontiguousarray(members, np.float32))
    shared = (m.T @ m) > 0
    shared.fill_diagonal_(True)
    n_patch = members.shape[1]
    out = torch.zeros(n_prefix + n_patch, n_prefix + n_patch, dtype=torch.float32)
    out[n_prefix:, n_prefix:] = torch.where(shared, 0.0, float(bias))
    return out


def _vit_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.ModuleList]:
    """The embedding module and the list of blocks of a ``transformers`` ViT (DINOv2, ViT, DINOv2 with
    registers); a clear error for other architectures."""
    embeddings = getattr(model, "embeddings", None)
    blocks = getattr(getattr(model, "encoder", None), "layer", None)
    if (embeddings is None or not isinstance(blocks, torch.nn.ModuleList) or not len(blocks)
            or "attention_mask" not in inspect.signature(blocks[0].forward).parameters):
        raise ValueError(f"mask attention needs a ViT backbone whose blocks take an attention mask, got "
                         f"{type(model).__name__}: set pool.mask_attention to false")
    return embeddings, blocks


def check_backbone(extractor: FeatureExtractor) -> None:
    """Refuse, before any work, a backbone or feature layer mask attention cannot apply to."""
    _vit_parts(extractor.model)
    n_hidden = extractor.model.config.num_hidden_layers + 1
    if extractor.config.layer % n_hidden == 0:
        raise ValueError("mask attention needs features from a block (embed.layer 0 is the embedding output)")


@torch.no_grad()
def masked_features(extractor: FeatureExtractor, image: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    """The extractor's ``float32[Hp, Wp, C]`` patch features of ``image`` with its proposals biasing the
    attention of the feature block (``bias`` 0 gives the plain features); ``weights``: the ``[N, Hp, Wp]``
    cell covers of the proposals (:func:`~maskbank.tasks.pooling.mask_weights`), the same that pool them."""
    check_backbone(extractor)
    embeddings, blocks = _vit_parts(extractor.model)
    geometry = extractor.geometry(image.shape[:2])
    if np.shape(weights)[1:] != geometry.grid_hw:
        raise ValueError(f"weights must be [N, {geometry.grid_hw[0]}, {geometry.grid_hw[1]}], got {np.shape(weights)}")
    x = extractor.preprocess(image, geometry).to(extractor.device)
    n_hidden = extractor.model.config.num_hidden_layers + 1
    last = extractor.config.layer % n_hidden
    with autocast(extractor.device, extractor.config.bf16):
        hidden = embeddings(x)
        for block in blocks[: last - 1]:
            hidden = _tokens(block(hidden))
        n_patch = geometry.grid_hw[0] * geometry.grid_hw[1]
        logits_bias = attention_bias(token_membership(weights), hidden.shape[1] - n_patch, bias)
        mask = logits_bias.to(device=extractor.device, dtype=hidden.dtype)[None, None]
        hidden = _tokens(blocks[last - 1](hidden, attention_mask=mask))
    return hidden[0, hidden.shape[1] - n_patch :].float().reshape(*geometry.grid_hw, -1).cpu().numpy()


def _tokens(out: torch.Tensor | tuple) -> torch.Tensor:
    """A block's output tokens (older ``transformers`` blocks return a tuple)."""
    return out[0] if isinstance(out, tuple) else out
