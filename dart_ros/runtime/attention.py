"""Self-attention over many tokens with small heads: a Triton flash-attention kernel for the encoder.

Why a kernel of our own: the enc-dec's dominant cost is the encoder self-attention over the 5,184
image tokens of every class, 8 heads of dimension 32. The best kernel torch offers for that shape
(cuDNN) runs at ~210 TFLOP/s on the H100; this one, FlashAttention's online softmax written for
that shape and autotuned, at ~270 (``offline/runtime_probe.py attention``; docs/benchmarks.md):

- **Token-major in and out.** Reads q, k, v straight from the (N, L, heads·d) projections (any
  strides, e.g. q and k as halves of one GEMM's output) and writes (N, L, heads·d): no transposes.
- Small query tiles (autotuned; 64 rows won at 1–16 classes) keep many programs per SM at this
  head dimension; the softmax scale and log2(e) fold into one FMA before ``exp2``; statistics and
  accumulation stay fp32, probabilities are rounded to the input dtype for P·V as in FlashAttention.

Tried and dropped (measured slower at every block configuration, 5–20 %): computing half of the
exponentials with a polynomial on the FMA pipe (FlashAttention-4's trick against the exponential
unit's 1/16 rate); in Triton the extra instructions cost more than the unit's parallelism gave.

:func:`attention` is the entry point: it uses the kernel on CUDA for fp16/bf16 inputs without a mask
at head dimensions 16–128 (powers of two) over at least :data:`MIN_TOKENS` tokens, and
``F.scaled_dot_product_attention`` otherwise, so every other path (CPU, fp32 checks, masked
cross-attention, the decoder's 201 queries) is unchanged. The kernel is registered as a
``torch.library`` custom op so ``torch.compile`` treats it as one opaque call and CUDA graphs
capture it. Block sizes are autotuned per (tokens, head dimension) on the first call, which the
graph runners make before capture.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: attention() falls back to SDPA
    triton = None



def _configs():
    # (BLOCK_M, BLOCK_N, warps, stages): the measured front-runners and their neighbours.
    shapes = ((64, 64, 4, 3), (64, 64, 4, 4), (64, 32, 4, 4), (64, 128, 4, 3), (128, 64, 8, 3),
              (128, 64, 4, 3), (128, 64, 8, 4), (128, 32, 4, 4), (128, 128, 8, 3))
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st) for bm, bn, w, st in shapes]


def _grid_bias_configs():
    shapes = ((64, 64, 4, 3), (64, 128, 4, 3), (64, 32, 4, 3), (128, 64, 8, 3), (32, 64, 4, 3))
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st) for bm, bn, w, st in shapes]


if triton is not None:

    @triton.jit
    def _block(q, k_ptrs, v_ptrs, start, L, m_i, l_i, acc, qk_scale, stride_kl, stride_vl,
               BLOCK_N: tl.constexpr, MASK: tl.constexpr):
        offs_n = start + tl.arange(0, BLOCK_N)
        if MASK:
            k = tl.load(k_ptrs + start * stride_kl, mask=offs_n[None, :] < L, other=0.0)
            v = tl.load(v_ptrs + start * stride_vl, mask=offs_n[:, None] < L, other=0.0)
        else:
            k = tl.load(k_ptrs + start * stride_kl)
            v = tl.load(v_ptrs + start * stride_vl)
        s = tl.dot(q, k)
        if MASK:
            s = tl.where(offs_n[None, :] < L, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        return m_new, l_i, acc

    @triton.jit
    def _attention_kernel(Q, K, V, O, L, H, qk_scale,
                          s_qn, s_ql, s_kn, s_kl, s_vn, s_vl, s_on, s_ol,
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_nh = tl.program_id(1)
        n = pid_nh // H
        h = pid_nh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        offs_n = tl.arange(0, BLOCK_N)
        head = h * HEAD_DIM  # heads are contiguous HEAD_DIM-wide slices of the channel axis
        q = tl.load(Q + n * s_qn + offs_m[:, None] * s_ql + head + offs_d[None, :], mask=offs_m[:, None] < L,
                    other=0.0)
        k_ptrs = K + n * s_kn + offs_n[None, :] * s_kl + head + offs_d[:, None]  # (D, BLOCK_N): k transposed
        v_ptrs = V + n * s_vn + offs_n[:, None] * s_vl + head + offs_d[None, :]
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        full_end = (L // BLOCK_N) * BLOCK_N
        for start in range(0, full_end, BLOCK_N):
            m_i, l_i, acc = _block(q, k_ptrs, v_ptrs, start, L, m_i, l_i, acc, qk_scale, s_kl, s_vl, BLOCK_N, False)
        if full_end < L:  # the partial last block, masked
            m_i, l_i, acc = _block(q, k_ptrs, v_ptrs, full_end, L, m_i, l_i, acc, qk_scale, s_kl, s_vl, BLOCK_N, True)
        o = acc / l_i[:, None]
        tl.store(O + n * s_on + offs_m[:, None] * s_ol + head + offs_d[None, :], o.to(O.dtype.element_ty),
                 mask=offs_m[:, None] < L)

    _tuned_kernel = triton.autotune(configs=_configs(), key=["L", "HEAD_DIM"])(_attention_kernel)

    @triton.jit
    def _grid_bias_kernel(Q, K, V, BY, BX, ACC, ML, Lq, Lk, H, P, ROW0, qk_scale, keys_per_split,
                          s_qn, s_ql, s_kn, s_kl, s_vn, s_vl, s_bn, s_bq, s_bp, s_bh,
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_nh = tl.program_id(1)
        pid_s = tl.program_id(2)
        n = pid_nh // H
        h = pid_nh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        head = h * HEAD_DIM
        q = tl.load(Q + n * s_qn + offs_m[:, None] * s_ql + head + offs_d[None, :], mask=offs_m[:, None] < Lq,
                    other=0.0)
        rows = offs_m - ROW0  # bias rows; the leading ROW0 queries (the presence token) have none
        has_bias = (rows >= 0) & (offs_m < Lq)
        b_row = n * s_bn + rows * s_bq + h * s_bh
        lo = pid_s * keys_per_split
        hi = tl.minimum(lo + keys_per_split, Lk)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for start in range(lo, hi, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            valid = offs_n < hi
            k = tl.load(K + n * s_kn + offs_n[None, :] * s_kl + head + offs_d[:, None], mask=valid[None, :],
                        other=0.0)
            v = tl.load(V + n * s_vn + offs_n[:, None] * s_vl + head + offs_d[None, :], mask=valid[:, None],
                        other=0.0)
            s = tl.dot(q, k)
            # key (y, x) = divmod(key, P): its bias is by[q, y] + bx[q, x], read from the (small,
            # cache-resident) per-row tables instead of a materialised (N, H, Q, P²) bias.
            yi = offs_n // P
            bmask = has_bias[:, None] & valid[None, :]
            b = tl.load(BY + b_row[:, None] + yi[None, :] * s_bp, mask=bmask, other=0.0).to(tl.float32) + \
                tl.load(BX + b_row[:, None] + (offs_n - yi * P)[None, :] * s_bp, mask=bmask, other=0.0).to(tl.float32)
            x = tl.where(valid[None, :], s * qk_scale + b * 1.4426950408889634, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(x, 1))
            p = tl.math.exp2(x - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        base = (pid_s * tl.num_programs(1) + pid_nh) * Lq + offs_m  # (S, N·H, Lq) partials, fp32
        tl.store(ACC + base[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=offs_m[:, None] < Lq)
        tl.store(ML + base * 2, m_i, mask=offs_m < Lq)
        tl.store(ML + base * 2 + 1, l_i, mask=offs_m < Lq)

    _tuned_grid_bias_kernel = triton.autotune(configs=_grid_bias_configs(), key=["Lq", "Lk", "HEAD_DIM", "keys_per_split"])(
        _grid_bias_kernel)


def _token_major(t: torch.Tensor) -> bool:
    return t.dim() == 3 and t.stride(-1) == 1


def launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
           config: Optional["triton.Config"] = None) -> torch.Tensor:
    """Run the kernel: (N, L, H·d) queries over (N, L, H·d) keys/values, H heads -> (N, L, H·d).

    ``config``: fixed block sizes / warps / stages (probes, the interpreter in the tests); default:
    autotuned over :func:`_configs` on the first call per (L, d).
    """
    n, length, c = q.shape
    d = c // heads
    out = torch.empty(n, length, c, device=q.device, dtype=q.dtype)
    qk_scale = (1.0 / math.sqrt(d)) * 1.4426950408889634  # softmax scale and log2(e): exp(x) = exp2(x·log2 e)
    args = (q, k, v, out, length, heads, qk_scale, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            v.stride(0), v.stride(1), out.stride(0), out.stride(1))
    if config is None:
        grid = lambda meta: (triton.cdiv(length, meta["BLOCK_M"]), n * heads)  # noqa: E731
        _tuned_kernel[grid](*args, HEAD_DIM=d)
    else:
        grid = (triton.cdiv(length, config.kwargs["BLOCK_M"]), n * heads)
        _attention_kernel[grid](*args, HEAD_DIM=d, num_warps=config.num_warps, num_stages=config.num_stages,
                                **config.kwargs)
    return out


@torch.library.custom_op("dart_ros::flash_attention", mutates_args=())
def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """:func:`launch` (autotuned) as an opaque op for ``torch.compile`` and CUDA graphs."""
    return launch(q, k, v, heads)


@flash_attention.register_fake
def _(q, k, v, heads):
    return q.new_empty(q.shape)


def _key_splits(lq: int, lk: int, programs: int, device: torch.device) -> int:
    """Key splits so that the few query rows of the decoder (201) still give every SM work."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
    return max(1, min(math.ceil(2 * sms / programs), lk // 512))


def launch_grid_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, by: torch.Tensor, bx: torch.Tensor,
                     heads: int, config: Optional["triton.Config"] = None,
                     splits: Optional[int] = None) -> torch.Tensor:
    """Attention with a separable key-grid bias, computed on the fly; see :func:`grid_bias_attention`.
    ``config``/``splits``: fixed block sizes and key splits (probes, tests); default autotuned / by SM count."""
    n, lq, c = q.shape
    lk = k.shape[1]
    d = c // heads
    p = by.shape[2]
    splits = splits or _key_splits(lq, lk, math.ceil(lq / 64) * n * heads, q.device)
    keys_per_split = math.ceil(math.ceil(lk / splits) / 128) * 128  # whole blocks but the last
    splits = math.ceil(lk / keys_per_split)
    acc = torch.empty(splits, n * heads, lq, d, device=q.device, dtype=torch.float32)
    ml = torch.empty(splits, n * heads, lq, 2, device=q.device, dtype=torch.float32)
    qk_scale = (1.0 / math.sqrt(d)) * 1.4426950408889634
    args = (q, k, v, by, bx, acc, ml, lq, lk, heads, p, lq - by.shape[1], qk_scale, keys_per_split,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            by.stride(0), by.stride(1), by.stride(2), by.stride(3))
    if config is None:
        grid = lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), n * heads, splits)  # noqa: E731
        _tuned_grid_bias_kernel[grid](*args, HEAD_DIM=d)
    else:
        grid = (triton.cdiv(lq, config.kwargs["BLOCK_M"]), n * heads, splits)
        _grid_bias_kernel[grid](*args, HEAD_DIM=d, num_warps=config.num_warps, num_stages=config.num_stages,
                                **config.kwargs)
    m, l_ = ml.unbind(-1)  # merge the splits' partial softmaxes (log2 domain)
    w = torch.exp2(m - m.amax(0))
    o = (acc * w[..., None]).sum(0) / (l_ * w).sum(0)[..., None]  # (N·H, Lq, d)
    return o.view(n, heads, lq, d).transpose(1, 2).reshape(n, lq, c).to(q.dtype)


@torch.library.custom_op("dart_ros::grid_bias_attention", mutates_args=())
def grid_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, by: torch.Tensor, bx: torch.Tensor,
                        heads: int) -> torch.Tensor:
    """softmax(q·kᵀ/√d + bias)·v where key j sits at (y, x) = divmod(j, P) of a P×P grid and
    ``bias[n, h, i, j] = by[n, i', y, h] + bx[n, i', x, h]`` with ``i' = i - (Lq - Q)``: the bias of
    the last Q of the Lq queries (the leading ones, sam3's presence token, get none).

    q (N, Lq, H·d); k, v (N, P², H·d), token-major, any row strides; by, bx (N, Q, P, H). This is
    sam3's boxRPB cross-attention of the decoder without its (N, H, Lq, P²) bias tensor (1.3 GB per
    layer at 80 classes), with the few query rows spread over key splits so that the GPU fills.
    """
    return launch_grid_bias(q, k, v, by, bx, heads)


@grid_bias_attention.register_fake
def _(q, k, v, by, bx, heads):
    return q.new_empty(q.shape)


def grid_bias_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, by: torch.Tensor, bx: torch.Tensor,
                        heads: int) -> bool:
    if not _enabled or triton is None or not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    if not (q.dtype == k.dtype == v.dtype) or not all(_token_major(t) for t in (q, k, v)):
        return False
    d = q.shape[-1] // heads
    p = by.shape[2]
    return (d * heads == q.shape[-1] and d in (16, 32, 64, 128) and k.shape[1] == p * p and by.shape == bx.shape
            and by.stride() == bx.stride() and by.shape[-1] == heads)


def kernel_supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                    mask: Optional[torch.Tensor] = None) -> bool:
    """Whether :func:`flash_attention` handles these inputs (else :func:`attention` uses SDPA)."""
    if triton is None or mask is not None or not q.is_cuda:
        return False
    if q.dtype not in (torch.float16, torch.bfloat16) or not (q.dtype == k.dtype == v.dtype):
        return False
    if not all(_token_major(t) for t in (q, k, v)) or q.shape != k.shape or k.shape != v.shape:
        return False
    d = q.shape[-1] // heads
    # Short sequences (the decoder's 201 queries) stay on SDPA: launch-bound, nothing to gain there.
    return d * heads == q.shape[-1] and d in (16, 32, 64, 128) and q.shape[1] >= MIN_TOKENS


MIN_TOKENS = 1024
_enabled = True


def set_kernel_enabled(enabled: bool) -> None:
    """Turn the Triton kernel on or off process-wide (off: SDPA everywhere; for A/B checks)."""
    global _enabled
    _enabled = enabled


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
              mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N, Lq, C) queries over (N, Lk, C) keys/values, ``heads`` heads, tokens-major in and out."""
    if _enabled and kernel_supports(q, k, v, heads, mask):
        return flash_attention(q, k, v, heads)
    n, lq, c = q.shape
    d = c // heads
    q = q.reshape(n, lq, heads, d).transpose(1, 2)
    k = k.reshape(n, k.shape[1], heads, d).transpose(1, 2)
    v = v.reshape(n, v.shape[1], heads, d).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return o.transpose(1, 2).reshape(n, lq, c)
