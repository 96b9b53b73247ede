"""ViT attention with real-valued RoPE: no complex arithmetic, no fp32 round trip.

sam3's ``vitdet.Attention`` applies 2-D axial RoPE by viewing q/k channel pairs as complex numbers
in fp32 (``view_as_complex``), which costs two casts and several copies per block and cannot be
exported to ONNX. Here the same rotation is ``x·cos + rot(x)·sin`` with ``rot(a, b) = (-b, a)`` on
interleaved pairs, in the activations' own dtype, followed by fused SDPA. Swapped in per instance
(:func:`use_real_rope`); nothing in sam3 is patched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _attention_class():
    from sam3.model.vitdet import Attention

    class RealRopeAttention(Attention):
        """Drop-in for ``sam3.model.vitdet.Attention`` (same parameters, same maths)."""

        @classmethod
        def from_attention(cls, attn: nn.Module) -> "RealRopeAttention":
            new = cls.__new__(cls)
            nn.Module.__init__(new)
            new.__dict__.update(
                {k: v for k, v in attn.__dict__.items() if k not in ("_modules", "_parameters", "_buffers")}
            )
            new._modules = dict(attn._modules)
            new._parameters = dict(attn._parameters)
            new._buffers = {k: v for k, v in attn._buffers.items() if k != "freqs_cis"}
            freqs = attn.freqs_cis  # (L, head_dim/2) complex
            # Non-persistent: a pure function of the input size, recomputed, never in checkpoints.
            new.register_buffer("rope_cos", freqs.real.repeat_interleave(2, dim=-1).float(), persistent=False)
            new.register_buffer("rope_sin", freqs.imag.repeat_interleave(2, dim=-1).float(), persistent=False)
            new.freqs_cis = None
            return new

        def _rope(self, x: torch.Tensor) -> torch.Tensor:
            a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
            rotated = torch.stack((-b, a), dim=-1).flatten(-2)
            return x * self.rope_cos.to(x.dtype) + rotated * self.rope_sin.to(x.dtype)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, h, w, _ = x.shape  # ViTDet blocks always pass (B, H, W, C), windows included
            qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            q, k = self._rope(q), self._rope(k)
            x = F.scaled_dot_product_attention(q, k, v)
            x = x.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
            return self.proj(x)

    return RealRopeAttention


def use_real_rope(trunk: nn.Module) -> int:
    """Replace every RoPE attention of a ViT trunk by :class:`RealRopeAttention`; returns the count."""
    cls = _attention_class()
    count = 0
    for block in trunk.blocks:
        attn = getattr(block, "attn", None)
        if attn is None or isinstance(attn, cls) or getattr(attn, "freqs_cis", None) is None:
            continue
        if attn.use_rel_pos or attn.cls_token:
            raise ValueError("real-valued RoPE supports the SAM3 ViT (no rel-pos, no cls token)")
        block.attn = cls.from_attention(attn)
        count += 1
    return count
