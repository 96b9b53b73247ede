"""The encoder-decoder recomputed for the CUDA fast path: same maths, fewer passes over memory.

:class:`FusedEncDec` computes what :class:`dart_ros.runtime.encdec.GraphableEncDec` (and sam3's
encoder and decoder layers) compute, from the same parameters, but arranged for a GPU:

- **Native reduced precision.** The encoder and decoder layers run on copies of their weights in the
  compute dtype with activations in that dtype: no autocast, hence no per-call weight casts and no
  fp32 LayerNorm round trips over 5,184·N tokens, which under autocast cost a large share of the
  enc-dec time). What decides boxes and scores stays fp32 as in
  sam3: the reference boxes and their refinement, the presence head and the dot-product scoring.
- **The first encoder self-attention is shared by all classes.** Before the first cross-attention
  to the prompt, the image tokens do not depend on the class, so layer 0's self-attention (one
  sixth of the encoder's attention FLOPs) runs once per image instead of once per class.
- **Text projections once per vocabulary.** The K/V projections of the text tokens for every
  encoder cross-attention and decoder text cross-attention, and the scoring MLP of the text
  tokens, are computed when the vocabulary is set (:meth:`FusedEncDec.prompt_cache`); per frame
  only the image-dependent geometry token is projected. That token's layers project its one query
  rather than the image's keys and values (:mod:`dart_ros.runtime.geometry_token`).
- **Fewer memory passes**: the position encoding is added from a contiguous pre-expanded copy
  (vectorised kernels instead of broadcasting ones); the q/k projections of a self-attention share
  one GEMM; the decoder's image keys and values of all layers come from two GEMMs (they depend on
  the encoder memory only); the boxRPB bias is written
  once, in the attention's dtype and layout, with the presence token's zero row in place; its
  two MLPs (2 -> 256 -> 8 per grid row and column) run as one kernel
  (:mod:`dart_ros.runtime.narrow_mlp`).
- **Compiled stages** (``compile_stages``): the encoder and decoder loops and the geometry token go
  through ``torch.compile``, which fuses the residual adds, LayerNorms, casts and the decoder's many small
  element-wise ops into Triton kernels (GEMMs and attention stay on cuBLAS / cuDNN).

Checked against GraphableEncDec (and through it sam3's own layers) in fp32 by the tests.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dart_ros.runtime.attention import attention
from dart_ros.runtime.compiled import maybe_compiled
from dart_ros.runtime.narrow_mlp import narrow_mlp


@dataclasses.dataclass
class PromptCache:
    """Image-independent projections of a vocabulary's text tokens; class axis first everywhere.

    Attributes:
        enc_kv: (N, E, T, 2C) K|V of the text tokens for each of the E encoder cross-attentions.
        dec_kv: (N, D, T, 2C) K|V of the text tokens for each of the D decoder text cross-attentions.
        score_tokens: (N, T, C) fp32, the scoring MLP applied to the text tokens.
        mask: (N, T) bool, True = padding.
    """

    enc_kv: torch.Tensor
    dec_kv: torch.Tensor
    score_tokens: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return self.mask.shape[0]

    def tensors(self) -> Tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def rows(self, start: int, stop: int) -> "PromptCache":
        return PromptCache(*(t[start:stop] for t in self.tensors()))

    def empty_like(self, n: int) -> "PromptCache":
        return PromptCache(*(t[:1].repeat(n, *([1] * (t.dim() - 1))).contiguous() for t in self.tensors()))

    def copy_rows_(self, src: "PromptCache", start: int, count: int) -> None:
        """Rows [0, count) from ``src[start:start+count]``; the rest padded with a valid prompt (row ``start``)."""
        for dst, s in zip(self.tensors(), src.tensors(), strict=True):
            dst[:count].copy_(s[start : start + count])
            if count < dst.shape[0]:
                dst[count:].copy_(s[start : start + 1].expand(dst.shape[0] - count, *s.shape[1:]))


def _ln(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _linear_relu(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """relu(linear(x)) with the ReLU in the GEMM epilogue (cuBLASLt) where torch offers it; exact."""
    if hasattr(torch, "_addmm_activation") and linear.bias is not None:
        y = torch._addmm_activation(linear.bias, x.reshape(-1, x.shape[-1]), linear.weight.t())
        return y.view(*x.shape[:-1], -1)
    return F.relu(linear(x))


def _ffn(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """``linear2(relu(linear1(x)))`` of a sam3 encoder/decoder layer (ReLU checked at build time)."""
    return layer.linear2(_linear_relu(x, layer.linear1))


def _mlp(x: torch.Tensor, mlp: nn.Module) -> torch.Tensor:
    """sam3's ``MLP`` (ReLU between layers), hidden ReLUs fused into their GEMMs."""
    if getattr(mlp, "residual", False) or not isinstance(getattr(mlp, "out_norm", nn.Identity()), nn.Identity):
        return mlp(x)
    *hidden, last = mlp.layers
    for layer in hidden:
        x = _linear_relu(x, layer)
    return last(x)


def _out(mha: nn.MultiheadAttention, o: torch.Tensor) -> torch.Tensor:
    return F.linear(o, mha.out_proj.weight, mha.out_proj.bias)


def _proj(mha: nn.MultiheadAttention, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) × C of the packed in-projection (q: 0-1, k: 1-2, v: 2-3, k|v: 1-3)."""
    c = mha.embed_dim
    return F.linear(x, mha.in_proj_weight[start * c : stop * c], mha.in_proj_bias[start * c : stop * c])


def _self_attention(mha: nn.MultiheadAttention, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """q = k = x + pos, v = x; q and k from one GEMM."""
    c = mha.embed_dim
    qk = _proj(mha, x + pos, 0, 2)
    return _out(mha, attention(qk[..., :c], qk[..., c:], _proj(mha, x, 2, 3), mha.num_heads))


class FusedEncDec(nn.Module):
    """N prompts over one image's features; see the module docstring. Graph-capturable.

    Args:
        sam3: the model (fp32 reference modules; its encoder/decoder layers are copied to ``dtype``).
        feature_size: P, the side of the feature grid.
        img_pos: (P², 1, C) position encoding of the image tokens.
        dtype: compute dtype of the encoder and decoder layers.
        compile_stages: run the encoder and decoder loops through ``torch.compile`` (falls back to
            eager on any compile failure; see :mod:`dart_ros.runtime.compiled`).
    """

    def __init__(
        self,
        sam3: nn.Module,
        feature_size: int,
        img_pos: torch.Tensor,
        dtype: torch.dtype,
        compile_stages: bool = False,
    ):
        super().__init__()
        self.sam3 = sam3
        self.p = feature_size
        self.dtype = dtype
        transformer = sam3.transformer
        self.enc_layers = copy.deepcopy(transformer.encoder.layers).to(dtype)
        self.dec_layers = copy.deepcopy(transformer.decoder.layers).to(dtype)
        for layer in self.enc_layers:  # the layer configuration sam3 builds (model/build.py)
            if (
                not (layer.pre_norm and layer.pos_enc_at_attn)
                or layer.pos_enc_at_cross_attn_keys
                or layer.pos_enc_at_cross_attn_queries
            ):
                raise ValueError(
                    "FusedEncDec expects sam3's pre-norm encoder layers with positions in self-attention only"
                )
        for layer in list(self.enc_layers) + list(self.dec_layers):
            if layer.activation is not F.relu:
                raise ValueError("FusedEncDec expects ReLU feed-forward layers, as sam3 builds them")
        dec = transformer.decoder
        # The decoder's image keys and values depend on the encoder memory only, not on the queries:
        # every layer's projections in two GEMMs D·C wide, instead of 2·D GEMMs C wide that each
        # ran far below peak at few classes (K = C = 256 is too short for a wide GEMM's prologue).
        c = self.dec_layers[0].cross_attn.embed_dim
        for name, rows in (("mem_k", slice(c, 2 * c)), ("mem_v", slice(2 * c, 3 * c))):
            mhas = [layer.cross_attn for layer in self.dec_layers]
            self.register_buffer(
                name + "_w", torch.cat([m.in_proj_weight[rows] for m in mhas]).detach(), persistent=False
            )
            self.register_buffer(
                name + "_b", torch.cat([m.in_proj_bias[rows] for m in mhas]).detach(), persistent=False
            )
        # The geometry token's K|V for every encoder and decoder cross-attention to the prompt: one GEMV
        # (the text tokens' are cached per vocabulary, the token's change with every image).
        prompt_mhas = [layer.cross_attn_image for layer in self.enc_layers] + [
            layer.ca_text for layer in self.dec_layers
        ]
        self.register_buffer(
            "token_kv_w", torch.cat([m.in_proj_weight[c:] for m in prompt_mhas]).detach(), persistent=False
        )
        self.register_buffer(
            "token_kv_b", torch.cat([m.in_proj_bias[c:] for m in prompt_mhas]).detach(), persistent=False
        )
        # The boxRPB MLPs run over N·Q·P positions per layer: worth the compute dtype.
        self.rpb_x = copy.deepcopy(dec.boxRPB_embed_x).to(dtype) if dec.boxRPB != "none" else None
        self.rpb_y = copy.deepcopy(dec.boxRPB_embed_y).to(dtype) if dec.boxRPB != "none" else None
        # The query position head's output feeds compute-dtype layers only.
        self.ref_head = copy.deepcopy(dec.ref_point_head).to(dtype)
        # bias[(n,h,q), (y,x)] = by[(n,h,q), y] + bx[(n,h,q), x] = [by | bx] @ E, E the 0/1 (2P, P²) matrix:
        # the outer sum as one GEMM that writes the bias contiguously (a broadcasting add runs ~10x
        # below bandwidth on 5-D offsets). Each output is the fp32 sum of two products by 1: exact.
        grid = torch.arange(feature_size * feature_size, device=img_pos.device)
        e = torch.zeros(2 * feature_size, feature_size * feature_size, device=img_pos.device, dtype=dtype)
        e[grid // feature_size, grid] = 1
        e[feature_size + grid % feature_size, grid] = 1
        self.register_buffer("outer_sum", e, persistent=False)
        self.heads = self.enc_layers[0].self_attn.num_heads
        self.register_buffer("pos", img_pos[:, 0].to(dtype), persistent=False)  # (L, C)
        coords_h, coords_w = dec._get_coords(feature_size, feature_size, img_pos.device)
        self.register_buffer("coords_h", coords_h, persistent=False)
        self.register_buffer("coords_w", coords_w, persistent=False)
        self._pos_expanded: Dict[int, torch.Tensor] = {}
        # Automatic dynamic shapes: one compile for N = 1 and one for all larger buckets (and prompt
        # lengths). Specialising per bucket is no faster and exceeds dynamo's recompile limit.
        self.run_encoder = maybe_compiled(self._encoder, "encoder layers", compile_stages, dynamic=None)
        self.run_decoder = maybe_compiled(self._decoder, "decoder layers", compile_stages, dynamic=None)
        self.run_geometry = maybe_compiled(self._single_query_geometry, "geometry token", compile_stages, dynamic=None)

    # ----------------------------------------------------------------------- vocabulary time

    @torch.inference_mode()
    def prompt_cache(self, text: torch.Tensor, mask: torch.Tensor) -> PromptCache:
        """Text tokens (T, N, C) seq-first and mask (N, T) -> the vocabulary's :class:`PromptCache`."""
        t = text.transpose(0, 1)  # (N, T, C)
        td = t.to(self.dtype)
        enc = torch.stack([_proj(layer.cross_attn_image, td, 1, 3) for layer in self.enc_layers], 1)
        dec = torch.stack([_proj(layer.ca_text, td, 1, 3) for layer in self.dec_layers], 1)
        score = self.sam3.dot_prod_scoring.prompt_mlp
        score_tokens = score(t.float()) if score is not None else t.float()
        return PromptCache(enc.contiguous(), dec.contiguous(), score_tokens.contiguous(), mask.contiguous())

    # ----------------------------------------------------------------------- per frame

    def _pos_n(self, n: int) -> torch.Tensor:
        """(n, L, C) contiguous position encoding (built on first use, outside any graph capture)."""
        pos = self._pos_expanded.get(n)
        if pos is None or pos.device != self.pos.device:
            pos = self._pos_expanded[n] = self.pos.expand(n, -1, -1).contiguous()
        return pos

    def _geometry(self, img_feat: torch.Tensor, img_pos: torch.Tensor, n: int, cache: PromptCache):
        """Append the image's geometry CLS token to the cached text projections (official mode)."""
        from dart_ros.model.encdec import geometry_token
        from dart_ros.runtime import geometry_token as single_query

        encoder = self.sam3.geometry_encoder
        if single_query.supports(encoder):  # the query projected instead of the 5,184 keys and values
            return PromptCache(
                *self.run_geometry(img_feat, img_pos, cache.enc_kv, cache.dec_kv, cache.score_tokens, cache.mask)
            )
        from torch.nn.attention import SDPBackend, sdpa_kernel

        # One query over P² keys: fused kernels parallelise over queries and leave the GPU idle;
        # the plain matmul-softmax-matmul fills it.
        with sdpa_kernel([SDPBackend.MATH]):
            geo, geo_mask = geometry_token(self.sam3, img_feat.float(), img_pos.float(), (self.p, self.p))
        return PromptCache(
            *self._append_token(geo, geo_mask, cache.enc_kv, cache.dec_kv, cache.score_tokens, cache.mask)
        )

    def _single_query_geometry(
        self,
        img_feat: torch.Tensor,
        img_pos: torch.Tensor,
        enc_kv: torch.Tensor,
        dec_kv: torch.Tensor,
        score_tokens: torch.Tensor,
        mask: torch.Tensor,
    ):
        """The token by :mod:`dart_ros.runtime.geometry_token`, appended (compiled with ``compile_stages``:
        its ~70 small kernels, on the encoder's critical path, fuse into a few)."""
        from dart_ros.runtime import geometry_token as single_query

        geo, geo_mask = single_query.geometry_token(self.sam3.geometry_encoder, img_feat.float(), img_pos.float())
        return self._append_token(geo, geo_mask, enc_kv, dec_kv, score_tokens, mask)

    def _append_token(
        self,
        geo: torch.Tensor,
        geo_mask: torch.Tensor,
        enc_kv: torch.Tensor,
        dec_kv: torch.Tensor,
        score_tokens: torch.Tensor,
        mask: torch.Tensor,
    ):
        """The prompt cache's tensors with the (1, 1, C) fp32 token ``geo`` projected and appended."""
        n = len(mask)
        g = geo.transpose(0, 1)  # (1, 1, C) fp32
        kv = F.linear(g.to(self.dtype), self.token_kv_w, self.token_kv_b)  # every layer's K|V of the token
        e, d, width = enc_kv.shape[1], dec_kv.shape[1], enc_kv.shape[-1]
        enc, dec = kv[..., : e * width].view(1, e, 1, width), kv[..., e * width :].view(1, d, 1, width)
        score = self.sam3.dot_prod_scoring.prompt_mlp
        g_score = score(g) if score is not None else g
        return (
            torch.cat([enc_kv, enc.expand(n, -1, -1, -1)], dim=2),
            torch.cat([dec_kv, dec.expand(n, -1, -1, -1)], dim=2),
            torch.cat([score_tokens, g_score.expand(n, -1, -1)], dim=1),
            torch.cat([mask, geo_mask.expand(n, -1)], dim=1),
        )

    def _encoder(
        self, img: torch.Tensor, prompt: PromptCache, attend_mask: torch.Tensor, pos: torch.Tensor
    ) -> torch.Tensor:
        n = len(prompt)
        pos1 = self.pos[None]
        x = img  # (1, L, C): class-independent until the first cross-attention
        for i, layer in enumerate(self.enc_layers):
            if i == 0:
                x = x + _self_attention(layer.self_attn, _ln(x, layer.norm1), pos1)
            else:
                x = x + _self_attention(layer.self_attn, _ln(x, layer.norm1), pos)
            ca, c = layer.cross_attn_image, layer.cross_attn_image.embed_dim
            q = _proj(ca, _ln(x, layer.norm2), 0, 1).expand(n, -1, -1)
            kv = prompt.enc_kv[:, i]
            x = x + _out(ca, attention(q, kv[..., :c], kv[..., c:], ca.num_heads, attend_mask))
            x = x + _ffn(_ln(x, layer.norm3), layer)
        return x

    def _decoder(self, memory: torch.Tensor, prompt: PromptCache, attend: torch.Tensor, pos: torch.Tensor):
        """(N, L, C) encoder memory -> last layer's normed queries (N, Q, C) fp32, boxes (N, Q, 4)
        cxcywh fp32, presence token (N, 1, C)."""
        from sam3.model.model_misc import gen_sineembed_for_position, inverse_sigmoid

        n = len(prompt)
        dec = self.sam3.transformer.decoder
        c = dec.d_model
        keys = F.linear(memory + pos, self.mem_k_w, self.mem_k_b)  # (N, L, D·C): layer i's in columns i·C…
        values = F.linear(memory, self.mem_v_w, self.mem_v_b)
        tgt = dec.query_embed.weight.to(self.dtype)[None].expand(n, -1, -1)
        ref = dec.reference_points.weight.sigmoid()[None].expand(n, -1, -1)  # fp32 (N, Q, 4)
        presence = dec.presence_token.weight.to(self.dtype)[None].expand(n, -1, -1)
        zero_pos = torch.zeros_like(presence)
        normed = None
        for i, layer in enumerate(self.dec_layers):
            sine = gen_sineembed_for_position(ref.transpose(0, 1), c).transpose(0, 1)
            query_pos = torch.cat([zero_pos, _mlp(sine.to(self.dtype), self.ref_head)], dim=1)  # (N, 1+Q, C)
            t = torch.cat([presence, tgt], dim=1)
            t = _ln(t + _self_attention(layer.self_attn, t, query_pos), layer.norm2)
            kv = prompt.dec_kv[:, i]
            ct = layer.ca_text
            t = _ln(
                t + _out(ct, attention(_proj(ct, t + query_pos, 0, 1), kv[..., :c], kv[..., c:], ct.num_heads, attend)),
                layer.catext_norm,
            )
            ca = layer.cross_attn
            bias = self._rpb_bias(ref, t.shape[1]) if dec.boxRPB != "none" else None
            cols = slice(i * c, (i + 1) * c)
            o = attention(_proj(ca, t + query_pos, 0, 1), keys[..., cols], values[..., cols], ca.num_heads, bias)
            t = _ln(t + _out(ca, o), layer.norm1)
            t = _ln(t + _ffn(t, layer), layer.norm3)
            presence, tgt = t[:, :1], t[:, 1:]
            normed = _ln(tgt.float(), dec.norm)
            # Box refinement in fp32; after the last layer this is the final box.
            ref = (inverse_sigmoid(ref) + dec.bbox_embed(normed)).sigmoid()
        return normed, ref, presence

    def _rpb_bias(self, ref: torch.Tensor, out_rows: int) -> torch.Tensor:
        """(N, H, 1+Q, L) boxRPB bias of reference boxes (N, Q, 4) cxcywh, zero row for the presence token."""
        from sam3.model.box_ops import box_cxcywh_to_xyxy

        dec = self.sam3.transformer.decoder
        n, q, _ = ref.shape
        xyxy = box_cxcywh_to_xyxy(ref)
        dy = self.coords_h.view(1, 1, -1, 1) - xyxy[:, :, None, 1:4:2]  # (N, Q, H, 2)
        dx = self.coords_w.view(1, 1, -1, 1) - xyxy[:, :, None, 0:3:2]
        if dec.boxRPB in ("log", "both"):
            logs = [torch.sign(d * 8) * torch.log2(torch.abs(d * 8) + 1.0) / math.log2(8) for d in (dx, dy)]
            dx, dy = logs if dec.boxRPB == "log" else (torch.cat([dx, logs[0]], -1), torch.cat([dy, logs[1]], -1))
        by = narrow_mlp(dy.to(self.dtype), self.rpb_y).permute(0, 3, 1, 2)  # (N, H, Q, P)
        bx = narrow_mlp(dx.to(self.dtype), self.rpb_x).permute(0, 3, 1, 2)
        heads = by.shape[1]
        rows = torch.zeros(n, heads, out_rows, 2 * self.p, device=ref.device, dtype=self.dtype)
        rows[:, :, out_rows - q :, : self.p] = by  # the leading rows stay zero (presence token)
        rows[:, :, out_rows - q :, self.p :] = bx
        bias = torch.matmul(rows, self.outer_sum)  # (N, H, 1+Q, P²)
        return bias

    def forward(
        self, img_feat: torch.Tensor, img_pos: torch.Tensor, cache: PromptCache, geometry_token: bool = False
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args: img_feat, img_pos (P², 1, C) seq-first; ``cache`` of the N classes; geometry_token:
        append the image-conditioned geometry CLS token (official prompt mode).
        Returns: logits (N, Q) fp32, boxes (N, Q, 4) cxcywh fp32, presence logits (N,) fp32."""
        return self.decode(*self.encode(img_feat, img_pos, cache, geometry_token))

    def encode(
        self, img_feat: torch.Tensor, img_pos: torch.Tensor, cache: PromptCache, geometry_token: bool = False
    ) -> Tuple[torch.Tensor, PromptCache, torch.Tensor]:
        """The first half of :meth:`forward` (the graph runner captures the halves separately, so
        that the pipeline can start the next frame's backbone between them): -> encoder memory
        (N, L, C), the prompt (with the geometry token in official mode), the attend mask."""
        n = len(cache)
        prompt = self._geometry(img_feat, img_pos, n, cache) if geometry_token else cache
        attend = (~prompt.mask)[:, None, None, :]  # (N, 1, 1, T) True = attend
        # Contiguous tokens: a student's NCHW map arrives channel-major here, and the residual adds
        # would carry that layout through every layer (strided, slower kernels).
        img = img_feat.transpose(0, 1).to(self.dtype).contiguous()
        pos = self._pos_n(n)  # (N, L, C), built outside the compiled functions
        return self.run_encoder(img, prompt, attend, pos), prompt, attend

    def decode(
        self, memory: torch.Tensor, prompt: PromptCache, attend: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The second half of :meth:`forward`: decoder, presence head and scoring."""
        normed, ref, presence = self.run_decoder(memory, prompt, attend, self._pos_n(len(prompt)))
        dec = self.sam3.transformer.decoder
        presence_logits = dec.presence_token_head(dec.presence_token_out_norm(presence.float()))[:, 0, 0]
        return self._scores(normed, prompt), ref, presence_logits

    def _scores(self, hs: torch.Tensor, prompt: PromptCache) -> torch.Tensor:
        """``DotProductScoring`` on the last layer (N, Q, C) with the prompt's cached MLP tokens."""
        s = self.sam3.dot_prod_scoring
        valid = (~prompt.mask).float()[..., None]  # (N, T, 1)
        pooled = (prompt.score_tokens * valid).sum(1) / valid.sum(1).clamp(min=1.0)
        scores = torch.matmul(s.hs_proj(hs), s.prompt_proj(pooled)[..., None])[..., 0] * s.scale
        if s.clamp_logits:
            scores = scores.clamp(min=-s.clamp_max_val, max=s.clamp_max_val)
        return scores
