"""The SAM3 ViT trunk recomputed with fewer memory passes, for the CUDA fast path.

Same parameters, same maths as ``sam3.model.vitdet.ViT`` (checked against it in fp32 by the
tests); only the order of work changes:

- **Window-major tokens.** The residual stream is permuted once, after the stem, so that the tokens
  of each 24×24 window are contiguous. Windowed blocks then attend over plain views (no partition
  / unpartition copies: two per windowed block in sam3), and global blocks attend over the same
  permuted sequence with their RoPE tables permuted alike: attention is permutation-equivariant and
  RoPE is a per-token rotation, so the result is the same. One inverse permutation at the end.
- **RoPE in one compiled kernel** (``torch.compile``; or three ATen kernels: swap pairs, multiply,
  fused multiply-add) for q and k together on the qkv projection's own layout, with the sign of
  the rotation folded into the sine table, instead of ten strided kernels.
- **GELU in the fc1 GEMM's epilogue** (reduced precision only; see ``_FastBlock._mlp``).
- **Residual add and the next LayerNorm in one kernel** (compiled): the trunk is run as a chain of
  residual branches, each add fused with the norm of the branch that follows it (one pass of
  reads fewer per branch, and one kernel launch).
- **Attention token-major in and out** (:func:`dart_ros.runtime.attention.attention`: our Triton
  kernel on CUDA in reduced precision, SDPA elsewhere): q, k and v are read as strided views of
  the RoPE and qkv outputs and the heads come back merged, so no copies either side.
- **Patch embedding as one GEMM**: the 14×14 stride-14 convolution is a matrix product over
  non-overlapping patches, which cuBLAS runs far faster than cuDNN's implicit-GEMM kernel.
- **Block GEMMs on the measured-fastest cuBLASLt algorithm** inside the CUDA graph, given a
  :class:`dart_ros.runtime.blaslt.GemmTuner` (nvmath-python; torch's own pick otherwise).

In sam3's trunk these copies and strided element-wise kernels take a large share of the
backbone's time for no FLOPs. Pruned trunks are supported (skipped blocks and masked attention / MLP branches).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dart_ros.runtime.attention import attention
from dart_ros.runtime.blaslt import GemmTuner, torch_linear
from dart_ros.runtime.compiled import maybe_compiled


def rope_qk(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE of the q and k parts of a (S, L, 3, H, D) qkv tensor -> (S, L, 2, H, D).

    Rotating channel pairs (a, b) -> (a·cos − b·sin, b·cos + a·sin) is ``x·cos + swap(x)·sin_signed``
    with the pairs swapped to (b, a) and sin_signed = (−sin, +sin) per pair (see :func:`_rope_tables`).
    """
    qk = qkv[:, :, :2]
    swapped = qk.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return torch.addcmul(qk * cos, swapped, sin)


def rope_kernel(compiled: bool):
    """The RoPE function the fast ViT calls: compiled into one Triton kernel, or plain ATen.

    The three ATen kernels make five strided passes over q and k; the compiled kernel makes two.
    """
    return maybe_compiled(rope_qk, "RoPE", compiled, dynamic=False, fullgraph=True)


def residual_layer_norm(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x + y, LayerNorm(x + y)): a residual add and the LayerNorm that reads its result."""
    s = x + y
    return s, F.layer_norm(s, (s.shape[-1],), weight, bias, eps)


def window_major_order(grid: int, window: int) -> torch.Tensor:
    """Row-major token index of each window-major position, for a ``grid``² map of ``window``² windows."""
    n = grid // window
    return torch.arange(grid * grid).view(n, window, n, window).permute(0, 2, 1, 3).reshape(-1)


def _rope_tables(attn: nn.Module, order: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(L, 1, 1, D) cos and sign-folded sin tables of a RoPE attention, rows in token order ``order``.

    RoPE rotates channel pairs (a, b) -> (a·cos − b·sin, b·cos + a·sin); with the pairs swapped to
    (b, a), that is ``x·cos + swap(x)·sin_signed`` where sin_signed = (−sin, +sin) per pair.
    """
    if getattr(attn, "rope_cos", None) is not None:  # RealRopeAttention
        cos, sin = attn.rope_cos.float(), attn.rope_sin.float()
    else:
        freqs = attn.freqs_cis
        cos = freqs.real.repeat_interleave(2, dim=-1).float()
        sin = freqs.imag.repeat_interleave(2, dim=-1).float()
    sign = torch.tensor([-1.0, 1.0], device=sin.device).repeat(sin.shape[-1] // 2)
    sin = sin * sign
    if order is not None:
        cos, sin = cos[order.to(cos.device)], sin[order.to(sin.device)]
    return cos[:, None, None, :], sin[:, None, None, :]


class _FastBlock(nn.Module):
    """One ViT block (or a pruned one) over window-major tokens (1, L, C), as residual branches
    (:meth:`branches`) that :class:`FastViTTrunk` chains."""

    def __init__(
        self,
        block: nn.Module,
        grid: int,
        order: torch.Tensor,
        rope=rope_qk,
        gelu_epilogue: bool = False,
        gemms: Optional[GemmTuner] = None,
    ):
        super().__init__()
        self.rope = rope
        self.gelu_epilogue = gelu_epilogue
        self.gemms = gemms
        self.has_attn = hasattr(block, "attn") and not isinstance(block, nn.Identity)
        self.has_mlp = hasattr(block, "mlp") and not isinstance(block, nn.Identity)
        self.window = block.window_size if self.has_attn or self.has_mlp else 0
        if self.has_attn:
            attn = block.attn
            if getattr(attn, "use_rel_pos", False) or getattr(attn, "cls_token", False):
                raise ValueError("the fast ViT supports the SAM3 ViT (RoPE, no rel-pos, no cls token)")
            if not getattr(attn, "use_rope", True):
                raise ValueError("the fast ViT expects RoPE attention")
            self.norm1, self.qkv, self.proj, self.ls1 = block.norm1, attn.qkv, attn.proj, block.ls1
            self.heads = attn.num_heads
            cos, sin = _rope_tables(attn, None if self.window else order)
            self.register_buffer("cos", cos.to(attn.qkv.weight.dtype), persistent=False)
            self.register_buffer("sin", sin.to(attn.qkv.weight.dtype), persistent=False)
        if self.has_mlp:
            self.norm2, self.mlp, self.ls2 = block.norm2, block.mlp, block.ls2
            if gelu_epilogue and not (isinstance(self.mlp.act, nn.GELU) and isinstance(self.mlp.norm, nn.Identity)):
                self.gelu_epilogue = False  # only timm's Mlp with GELU and no hidden norm
        self.grid = grid

    def branches(self):
        """(norm, branch) of each residual branch present: ``x + branch(norm(x))``."""
        out = []
        if self.has_attn:
            out.append((self.norm1, lambda h: self.ls1(self._attention(h))))
        if self.has_mlp:
            out.append((self.norm2, lambda h: self.ls2(self._mlp(h))))
        return out

    def _attention(self, h: torch.Tensor) -> torch.Tensor:
        """Attention branch on the normed tokens ``h``."""
        b, n, c = h.shape
        seqs = b * (self.grid // self.window) ** 2 if self.window else b
        qkv = self._linear(h, self.qkv).view(seqs, -1, 3, self.heads, c // self.heads)  # (S, L', 3, H, D)
        qk = self.rope(qkv, self.cos, self.sin)  # rows: L'
        q, k, v = qk[:, :, 0].flatten(-2), qk[:, :, 1].flatten(-2), qkv[:, :, 2].flatten(-2)  # (S, L', C) views
        # Every window is a sequence of 576 tokens: enough work per call however few tokens each has.
        o = attention(q, k, v, self.heads, min_tokens=0)
        return self._linear(o.reshape(b, n, c), self.proj)

    def _linear(self, x: torch.Tensor, linear: nn.Linear, gelu: bool = False) -> torch.Tensor:
        """``linear(x)`` (GELU'd in the epilogue with ``gelu``) over the tokens of (…, K) ``x``."""
        x2 = x.reshape(-1, x.shape[-1])
        if self.gemms is None or linear.bias is None:
            y = torch_linear(x2, linear.weight, linear.bias, gelu)
        else:
            y = self.gemms.linear(x2, linear.weight, linear.bias, gelu)
        return y.view(*x.shape[:-1], -1)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        if not self.gelu_epilogue:
            return self.mlp(x)
        # GELU in the GEMM epilogue (cuBLASLt; its tanh form, within 1e-3 of erf, far below bf16's
        # resolution): saves a pass over the widest activation of the block.
        return self._linear(self._linear(x, self.mlp.fc1, gelu=True), self.mlp.fc2)


class FastViTTrunk(nn.Module):
    """``trunk(x)[-1]`` of a SAM3 ViT, computed over window-major tokens. Shares the trunk's parameters.

    Only for inference with an input grid that the window size divides (otherwise sam3 pads windows,
    and the padded tokens take part in attention; use the trunk itself there).
    """

    def __init__(
        self,
        trunk: nn.Module,
        grid: int,
        compile_kernels: bool = False,
        gelu_epilogue: bool = False,
        gemms: Optional[GemmTuner] = None,
    ):
        super().__init__()
        windows = {b.window_size for b in trunk.blocks if hasattr(b, "window_size") and b.window_size > 0}
        if len(windows) > 1:
            raise ValueError(f"the fast ViT needs one window size, got {sorted(windows)}")
        window = windows.pop() if windows else grid
        if grid % window:
            raise ValueError(f"feature grid {grid} is not a multiple of the window size {window}")
        if getattr(trunk, "retain_cls_token", False):
            raise ValueError("the fast ViT does not support a retained cls token")
        self.trunk = trunk
        self.grid = grid
        order = window_major_order(grid, window).to(trunk.patch_embed.proj.weight.device)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("inverse", torch.argsort(order), persistent=False)
        last = trunk.full_attn_ids[-1]
        rope = rope_kernel(compile_kernels)
        self.gemms = gemms
        self.blocks = nn.ModuleList(
            _FastBlock(b, grid, order, rope, gelu_epilogue, gemms) for b in list(trunk.blocks)[: last + 1]
        )
        conv = trunk.patch_embed.proj
        # Non-overlapping patches (kernel = stride, no padding, no groups): the conv is a GEMM.
        self._patch_gemm = (
            conv.kernel_size[0] == conv.kernel_size[1]
            and conv.stride == conv.kernel_size
            and conv.padding == (0, 0)
            and conv.groups == 1
            and conv.dilation == (1, 1)
        )
        self.residual_layer_norm = maybe_compiled(
            residual_layer_norm, "residual LayerNorm", compile_kernels, dynamic=False, fullgraph=True
        )

    def _add_norm(self, x: torch.Tensor, y: torch.Tensor, norm: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
        if isinstance(norm, nn.LayerNorm) and norm.elementwise_affine and norm.bias is not None:
            return self.residual_layer_norm(x, y, norm.weight, norm.bias, norm.eps)
        x = x + y
        return x, norm(x)

    def _patch_embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, P, P, C), as ``trunk.patch_embed``."""
        conv = self.trunk.patch_embed.proj
        k = conv.kernel_size[0]
        b, ch, h, w = x.shape
        if not self._patch_gemm or h % k or w % k:
            return self.trunk.patch_embed(x)
        patches = x.view(b, ch, h // k, k, w // k, k).permute(0, 2, 4, 1, 3, 5).reshape(-1, ch * k * k)
        return F.linear(patches, conv.weight.flatten(1), conv.bias).view(b, h // k, w // k, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, C, P, P), as ``trunk(x)[-1]``."""
        from sam3.model.vitdet import get_abs_pos

        t = self.trunk
        x = self._patch_embed(x)  # (B, P, P, C)
        b, h, w, c = x.shape
        if (h, w) != (self.grid, self.grid):
            raise ValueError(f"input gives a {h}x{w} token grid; this trunk was prepared for {self.grid}")
        if t.pos_embed is not None:
            x = x + get_abs_pos(
                t.pos_embed, t.pretrain_use_cls_token, (h, w), t.retain_cls_token, tiling=t.tile_abs_pos
            )
        x = t.ln_pre(x).reshape(b, h * w, c)[:, self.order]
        # x + branch(norm(x)) for every branch, the add fused with the norm that reads it next.
        steps = [nb for blk in self.blocks for nb in blk.branches()]
        normed = steps[0][0](x) if steps else t.ln_post(x)
        for i, (_, branch) in enumerate(steps):
            nxt = steps[i + 1][0] if i + 1 < len(steps) else t.ln_post
            x, normed = self._add_norm(x, branch(normed), nxt)
        x = normed[:, self.inverse]
        return x.view(b, h, w, c).permute(0, 3, 1, 2)


class FastViTDetection(nn.Module):
    """``forward_detection`` of :class:`dart_ros.model.vit.DetectionViTNeck` on :class:`FastViTTrunk`."""

    def __init__(
        self,
        neck: nn.Module,
        grid: int,
        compile_kernels: bool = False,
        gelu_epilogue: bool = False,
        gemms: Optional[GemmTuner] = None,
    ):
        super().__init__()
        from dart_ros.model.vit import DETECTION_SCALE

        self.neck = neck
        self.fast_trunk = FastViTTrunk(neck.trunk, grid, compile_kernels, gelu_epilogue, gemms)
        self.conv = neck.convs[neck.scale_factors.index(DETECTION_SCALE)]

    def forward_detection(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.fast_trunk(x))

    forward = forward_detection
