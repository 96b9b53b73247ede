"""The image-conditioned geometry token, computed by projecting its one query instead of the image's keys.

In the official prompt mode every frame's prompt gains one token from SAM3's geometry encoder: with
no boxes or points, its CLS token alone goes through the encoder's layers (self-attention,
cross-attention to the P² image tokens, FFN). sam3's layers project all P² = 5,184 keys and values
for that single query — two fp32 GEMMs over the image per layer, on the encoder's critical path,
for what is one vector's worth of attention.

With one query the projections can move to the query's side, exactly:

- logits over the keys: ``q_h·(W_k,h k_j + b_k,h) = (W_k,hᵀ q_h)·k_j + q_h·b_k,h``; the last term is
  the same for every key and cancels in the softmax, so the logits are ``keys @ (W_k,hᵀ q_h)``;
- values: the probabilities sum to one, so ``Σ_j p_j (W_v,h v_j + b_v,h) = W_v,h (Σ_j p_j v_j) + b_v,h``:
  pool the unprojected image tokens, then project H pooled vectors;
- self-attention over a single token is the identity on the attention weights:
  ``out_proj(W_v x + b_v)``.

Per layer that is two (P², C)·(C, H) products instead of two (P², C)·(C, C) ones. Same parameters
as sam3's modules (no copies); fp32 in, fp32 out, as the reference computes it. The tests check it
against ``empty_prompt_token`` (sam3's layers) and, through the fused enc-dec, the official path.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn


def _in_proj(mha: nn.MultiheadAttention, which: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight (C, C), bias (C,)) of the q (0), k (1) or v (2) input projection."""
    c = mha.embed_dim
    w = mha.in_proj_weight[which * c : (which + 1) * c]
    b = mha.in_proj_bias[which * c : (which + 1) * c] if mha.in_proj_bias is not None else None
    return w, b


def single_query_cross_attention(
    mha: nn.MultiheadAttention, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """``mha(query, keys, values)[0]`` for one query per batch, without projecting keys or values.

    Args: query (B, C); keys, values (L, B, C) seq-first (sam3's layout). Returns (B, C).
    """
    h = mha.num_heads
    b, c = query.shape
    d = c // h
    wq, bq = _in_proj(mha, 0)
    wk, _ = _in_proj(mha, 1)  # its bias shifts every logit alike: cancels in the softmax
    wv, bv = _in_proj(mha, 2)
    q = F.linear(query, wq, bq).view(b, h, d)
    u = torch.einsum("bhd,hdc->bhc", q, wk.view(h, d, c)) / math.sqrt(d)  # (B, H, C): W_k,hᵀ q_h
    # keys last: softmax over the contiguous axis (over a strided one torch picks a slow kernel)
    p = torch.einsum("bhc,lbc->bhl", u, keys).softmax(dim=-1)  # (B, H, L)
    pooled = torch.bmm(p, values.transpose(0, 1))  # (B, H, C)
    o = torch.einsum("bhc,hdc->bhd", pooled, wv.view(h, d, c)).reshape(b, c)
    if bv is not None:
        o = o + bv
    return mha.out_proj(o)


def single_token_self_attention(mha: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """``mha(x, x, x)[0]`` for a sequence of one (unmasked) token: (B, C) -> (B, C)."""
    wv, bv = _in_proj(mha, 2)
    return mha.out_proj(F.linear(x, wv, bv))


def _encoder_layer(layer: nn.Module, tgt: torch.Tensor, memory: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """sam3's pre-norm ``TransformerEncoderLayer`` (eval) for one token (B, C) over memory (L, B, C)."""
    tgt = tgt + single_token_self_attention(layer.self_attn, layer.norm1(tgt))
    tgt = tgt + single_query_cross_attention(layer.cross_attn_image, layer.norm2(tgt), keys, memory)
    return tgt + layer.linear2(layer.activation(layer.linear1(layer.norm3(tgt))))


def supports(encoder: nn.Module) -> bool:
    """Whether ``encoder`` is a geometry encoder whose layers this module reproduces exactly."""
    layers = getattr(encoder, "encode", None)
    if (
        layers is None
        or getattr(encoder, "cls_embed", None) is None
        or getattr(encoder, "final_proj", None) is None
        or not hasattr(encoder, "encode_norm")
    ):
        return False
    for layer in layers:
        if not getattr(layer, "pre_norm", False) or getattr(layer, "pos_enc_at_attn", True):
            return False
        for mha in (layer.self_attn, layer.cross_attn_image):
            if not isinstance(mha, nn.MultiheadAttention) or not mha._qkv_same_embed_dim:
                return False
    return True


def geometry_token(
    encoder: nn.Module, img_feat: torch.Tensor, img_pos: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """What ``encoder.empty_prompt_token(img_feat, img_pos)`` returns (dart_ros's sam3 geometry encoder).

    Args: img_feat, img_pos (P², B, C) seq-first. Returns (1, B, C) token, (B, 1) mask (False = valid).
    """
    if encoder.training:
        raise RuntimeError("the single-query geometry token is an inference path (no dropout)")
    bs = img_feat.shape[1]
    token = encoder.norm(encoder.final_proj(encoder.cls_embed.weight.view(1, -1))).expand(bs, -1)
    keys_with_pos = img_feat + img_pos
    for layer in encoder.encode:
        keys = keys_with_pos if layer.pos_enc_at_cross_attn_keys else img_feat
        token = _encoder_layer(layer, token, img_feat, keys)
    mask = torch.zeros(bs, 1, dtype=torch.bool, device=img_feat.device)
    return encoder.encode_norm(token)[None], mask
