"""The encoder's attention over many image tokens with small heads: a Triton flash-attention kernel.

Why a kernel of our own: the enc-dec's dominant cost is the encoder self-attention over the 5,184
image tokens of every class, 8 heads of dimension 32, a shape torch's kernels (cuDNN included)
run well below what the GPU can do. This one is FlashAttention's online softmax written for that
shape and autotuned. The same kernel serves the encoder's cross-attention of those tokens to the (padded, ~33-token)
text prompt, which cuDNN runs far below memory speed.

- **Token-major in and out.** Reads q, k, v straight from the (N, L, heads·d) projections (any
  strides: q and k as halves of one GEMM's output, a query broadcast over the classes) and writes
  (N, L, heads·d): no transposes.
- Small query tiles (autotuned) keep many programs per SM at this head dimension; the softmax
  scale and log2(e) fold into one FMA before ``exp2``; statistics and accumulation stay fp32,
  probabilities are rounded to the input dtype for P·V as in FlashAttention.
- Without a key mask, on Hopper and later, the tiles are moved by the TMA unit (host-built tensor
  descriptors over the (N, L, H·d) tensors; out-of-range rows arrive as zeros and are not stored),
  which is faster than pointer loads at the enc-dec's and the ViT's shapes.
- Key-padding masks (N, Lk) as SDPA's boolean (N, 1, 1, Lk) ``attn_mask``.
- The decoder's boxRPB cross-attention (201 queries over the 5,184 tokens, additive bias) on a
  second kernel, :func:`biased_attention`, that splits the keys over programs: cuDNN gets only
  N·H·4 programs there, each looping over every key, and is latency-bound at few classes.

:func:`attention` is the entry point: it uses the kernels on CUDA for fp16/bf16 inputs at head
dimensions 16–128 (powers of two) — at least :data:`MIN_TOKENS` queries with no mask or a
key-padding mask, or at least that many keys with an additive bias — and
``F.scaled_dot_product_attention`` otherwise, so every other path (CPU, fp32 checks, the decoder's
self- and text attention) is unchanged. The kernels are registered as ``torch.library`` custom ops
so ``torch.compile`` treats them as opaque calls and CUDA graphs capture them. Block sizes are
autotuned per shape on the first call, which the graph runners make before capture; the choices
are kept in Triton's cache folder for the next process (:mod:`dart_ros.runtime.autotune`).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: attention() falls back to SDPA
    triton = None
from dart_ros.runtime.autotune import PersistentTuner, autotune

try:  # Triton >= 3.3: host-built TMA descriptors (Hopper and later)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:
    TensorDescriptor = None


# Queries (or, with a bias, keys) below this stay on SDPA: launch-bound, nothing to gain there.
MIN_TOKENS = 1024


def _qk_scale(head_dim: int) -> float:
    """Softmax scale times log2(e): the kernels exponentiate with exp2."""
    return (1.0 / math.sqrt(head_dim)) * 1.4426950408889634


def _configs():
    # (BLOCK_M, BLOCK_N, warps, stages): the measured front-runners and their neighbours.
    shapes = (
        (64, 64, 4, 3),
        (64, 64, 4, 4),
        (64, 32, 4, 4),
        (64, 128, 4, 3),
        (128, 64, 8, 3),
        (128, 64, 4, 3),
        (128, 64, 8, 4),
        (128, 32, 4, 4),
        (128, 128, 8, 3),
    )
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st) for bm, bn, w, st in shapes]


def _tma_configs():
    # With TMA loads, 64 × 128 tiles suit the enc-dec's shapes and the ViT's global blocks, 128 × 64
    # (8 warps) its windows; the neighbours cover other GPUs. Capped at 128 registers a thread, four
    # programs of 64 × 128 share an SM instead of three (more warps to cover the score GEMM's wait).
    shapes = (
        (64, 128, 4, 3, None),
        (64, 128, 4, 3, 128),
        (64, 64, 4, 4, None),
        (64, 64, 4, 3, None),
        (128, 64, 8, 3, None),
        (128, 128, 8, 3, 128),
        (128, 64, 8, 4, None),
    )
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st, maxnreg=regs)
        for bm, bn, w, st, regs in shapes
    ]


def _tma_blocks(descs, config: "triton.Config", head_dim: int) -> None:
    """A config's block sizes into the q, k, v, out descriptors (the tuner launches the same
    descriptors with every config)."""
    rows = (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.kwargs["BLOCK_N"], config.kwargs["BLOCK_M"])
    for desc, r in zip(descs, rows, strict=True):
        desc.block_shape = [1, r, head_dim]


def _biased_configs():
    shapes = ((64, 64, 4, 3), (64, 128, 4, 3), (64, 32, 4, 3), (128, 64, 8, 3), (32, 64, 4, 3))
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st) for bm, bn, w, st in shapes]


if triton is not None:

    @triton.jit
    def _query_tile(Q, s_qn, s_ql, Lq, H, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
        """Program (m, n·H + h): class n, head h, its channel offset, BLOCK_M query rows and their q tile."""
        pid_nh = tl.program_id(1)
        n = pid_nh // H
        h = pid_nh % H
        head = h * HEAD_DIM  # heads are contiguous HEAD_DIM-wide slices of the channel axis
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(
            Q + n * s_qn + offs_m[:, None] * s_ql + head + offs_d[None, :], mask=offs_m[:, None] < Lq, other=0.0
        )
        return n, h, head, offs_m, offs_d, q

    @triton.jit
    def _exp2_pairs(x, DTYPE: tl.constexpr):
        """2**x of fp32 ``x`` rounded to DTYPE, two values per special-function instruction (sm_90)."""
        if DTYPE == tl.bfloat16:
            return tl.inline_asm_elementwise(
                "ex2.approx.ftz.bf16x2 $0, $1;", "=r,r", [x.to(tl.bfloat16)], dtype=tl.bfloat16, is_pure=True, pack=2
            )
        else:
            return tl.inline_asm_elementwise(
                "ex2.approx.f16x2 $0, $1;", "=r,r", [x.to(tl.float16)], dtype=tl.float16, is_pure=True, pack=2
            )

    @triton.jit
    def _row_sums_init(BLOCK_M: tl.constexpr, EXP_MODE: tl.constexpr):
        if EXP_MODE == 2:  # row sums accumulated by the tensor cores, in 16 equal columns
            return tl.zeros([BLOCK_M, 16], tl.float32)
        else:
            return tl.zeros([BLOCK_M], tl.float32)

    @triton.jit
    def _row_sums_final(l_i, EXP_MODE: tl.constexpr):
        if EXP_MODE == 2:
            return tl.max(l_i, 1)
        else:
            return l_i

    @triton.jit
    def _online_softmax(s, v, m_i, l_i, acc, qk_scale, EXP_MODE: tl.constexpr = 0):
        """One key block's scores ``s`` folded into the running max, sum and P·V accumulator.

        EXP_MODE 0: fp32 exponentials, rounded to the input dtype for P·V. 1: exponentials of
        arguments rounded to the input dtype, two per instruction (the special-function unit is
        this head dimension's bottleneck, not the tensor cores). 2: as 1, and the row sums taken
        by the tensor cores as P·1 instead of converting P back to fp32.
        """
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        alpha = tl.math.exp2(m_i - m_new)
        if EXP_MODE == 0:
            p32 = tl.math.exp2(s * qk_scale - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p32, 1)
            p = p32.to(v.dtype)
        else:
            p = _exp2_pairs(s * qk_scale - m_new[:, None], v.dtype)
            if EXP_MODE == 1:
                l_i = l_i * alpha + tl.sum(p.to(tl.float32), 1)
            else:
                ones = tl.full([s.shape[1], 16], 1.0, v.dtype)
                l_i = tl.dot(p, ones, l_i * alpha[:, None])
        acc = acc * alpha[:, None] + tl.dot(p, v)
        return m_new, l_i, acc

    @triton.jit
    def _blocks(
        tile,
        lo,
        hi,
        m_i,
        l_i,
        acc,
        BLOCK_N: tl.constexpr,
        MASK: tl.constexpr,
        HAS_KEY_MASK: tl.constexpr,
        EXP_MODE: tl.constexpr,
    ):
        """The key blocks starting in [lo, hi) folded into the softmax state; MASK: bounds-check the
        keys (and apply the key mask), else every block is whole. ``tile``: the program's q tile,
        key / value / key-mask pointers, Lk, scale and key / value row strides."""
        q, k_ptrs, v_ptrs, km_ptr, Lk, qk_scale, stride_kl, stride_vl = tile
        for start in range(lo, hi, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            if MASK:
                k = tl.load(k_ptrs + start * stride_kl, mask=offs_n[None, :] < Lk, other=0.0)
                v = tl.load(v_ptrs + start * stride_vl, mask=offs_n[:, None] < Lk, other=0.0)
            else:
                k = tl.load(k_ptrs + start * stride_kl)
                v = tl.load(v_ptrs + start * stride_vl)
            s = tl.dot(q, k)
            if MASK:
                valid = offs_n < Lk
                if HAS_KEY_MASK:
                    valid = valid & (tl.load(km_ptr + offs_n, mask=offs_n < Lk, other=0) != 0)
                s = tl.where(valid[None, :], s, float("-inf"))
            m_i, l_i, acc = _online_softmax(s, v, m_i, l_i, acc, qk_scale, EXP_MODE)
        return m_i, l_i, acc

    @triton.jit
    def _attention_kernel(
        Q,
        K,
        V,
        Out,
        KM,
        Lq,
        Lk,
        H,
        qk_scale,
        s_qn,
        s_ql,
        s_kn,
        s_kl,
        s_vn,
        s_vl,
        s_on,
        s_ol,
        s_km,
        HEAD_DIM: tl.constexpr,
        HAS_KEY_MASK: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        EXP_MODE: tl.constexpr = 0,
    ):
        n, h, head, offs_m, offs_d, q = _query_tile(Q, s_qn, s_ql, Lq, H, HEAD_DIM, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        k_ptrs = K + n * s_kn + offs_n[None, :] * s_kl + head + offs_d[:, None]  # (D, BLOCK_N): k transposed
        v_ptrs = V + n * s_vn + offs_n[:, None] * s_vl + head + offs_d[None, :]
        km_ptr = KM + n * s_km
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = _row_sums_init(BLOCK_M, EXP_MODE)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        # a key mask (short text prompts) masks every block; without one only the partial last block
        full_end = 0 if HAS_KEY_MASK else (Lk // BLOCK_N) * BLOCK_N
        tile = (q, k_ptrs, v_ptrs, km_ptr, Lk, qk_scale, s_kl, s_vl)
        m_i, l_i, acc = _blocks(tile, 0, full_end, m_i, l_i, acc, BLOCK_N, False, False, EXP_MODE)
        m_i, l_i, acc = _blocks(tile, full_end, Lk, m_i, l_i, acc, BLOCK_N, True, HAS_KEY_MASK, EXP_MODE)
        o = acc / _row_sums_final(l_i, EXP_MODE)[:, None]
        tl.store(
            Out + n * s_on + offs_m[:, None] * s_ol + head + offs_d[None, :],
            o.to(Out.dtype.element_ty),
            mask=offs_m[:, None] < Lq,
        )

    _tuned_kernel = autotune(_configs(), key=["Lq", "Lk", "HEAD_DIM", "HAS_KEY_MASK", "EXP_MODE"])(_attention_kernel)

    @triton.jit
    def _tma_step(
        q,
        k_desc,
        v_desc,
        n,
        col,
        start,
        Lk,
        m_i,
        l_i,
        acc,
        qk_scale,
        HEAD_DIM: tl.constexpr,
        BLOCK_N: tl.constexpr,
        MASK: tl.constexpr,
        EXP_MODE: tl.constexpr,
    ):
        k = k_desc.load([n, start, col]).reshape(BLOCK_N, HEAD_DIM)  # rows past Lk arrive as zeros
        v = v_desc.load([n, start, col]).reshape(BLOCK_N, HEAD_DIM)
        s = tl.dot(q, k.T)
        if MASK:
            s = tl.where((start + tl.arange(0, BLOCK_N) < Lk)[None, :], s, float("-inf"))
        return _online_softmax(s, v, m_i, l_i, acc, qk_scale, EXP_MODE)

    @triton.jit
    def _tma_attention_kernel(
        q_desc,
        k_desc,
        v_desc,
        o_desc,
        Lq,
        Lk,
        H,
        qk_scale,
        HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        EXP_MODE: tl.constexpr = 0,
    ):
        """:func:`_attention_kernel` without a key mask, its tiles moved by the TMA unit: (N, L, H·d)
        descriptors, program (m, n·H + h)."""
        pid_nh = tl.program_id(1)
        n = pid_nh // H
        col = (pid_nh % H) * HEAD_DIM
        start_m = tl.program_id(0) * BLOCK_M
        q = q_desc.load([n, start_m, col]).reshape(BLOCK_M, HEAD_DIM)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = _row_sums_init(BLOCK_M, EXP_MODE)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        full_end = (Lk // BLOCK_N) * BLOCK_N
        for start in range(0, full_end, BLOCK_N):
            m_i, l_i, acc = _tma_step(
                q, k_desc, v_desc, n, col, start, Lk, m_i, l_i, acc, qk_scale, HEAD_DIM, BLOCK_N, False, EXP_MODE
            )
        for start in range(full_end, Lk, BLOCK_N):
            m_i, l_i, acc = _tma_step(
                q, k_desc, v_desc, n, col, start, Lk, m_i, l_i, acc, qk_scale, HEAD_DIM, BLOCK_N, True, EXP_MODE
            )
        o = acc / _row_sums_final(l_i, EXP_MODE)[:, None]
        o_desc.store([n, start_m, col], o.to(o_desc.dtype).reshape(1, BLOCK_M, HEAD_DIM))  # rows past Lq dropped

    # Triton's autotuner cannot keep choices whose descriptors change per config (see autotune.py)
    _tma_tuner = PersistentTuner("tma_attention", _tma_configs(), version=lambda: _tma_attention_kernel.cache_key)

    @triton.jit
    def _biased_split_kernel(
        Q,
        K,
        V,
        B,
        ACC,
        ML,
        Lq,
        Lk,
        H,
        qk_scale,
        keys_per_split,
        s_qn,
        s_ql,
        s_kn,
        s_kl,
        s_vn,
        s_vl,
        s_bn,
        s_bh,
        s_bq,
        HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        """Few queries over many keys with an additive bias: program (m, n·h, s) covers the s-th
        slice of the keys and writes its unnormalised partial softmax (merged by the caller)."""
        n, h, head, offs_m, offs_d, q = _query_tile(Q, s_qn, s_ql, Lq, H, HEAD_DIM, BLOCK_M)
        pid_s = tl.program_id(2)
        row_ok = offs_m < Lq
        b_rows = B + n * s_bn + h * s_bh + offs_m[:, None] * s_bq
        lo = pid_s * keys_per_split
        hi = tl.minimum(lo + keys_per_split, Lk)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for start in range(lo, hi, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            valid = offs_n < hi
            k = tl.load(K + n * s_kn + offs_n[None, :] * s_kl + head + offs_d[:, None], mask=valid[None, :], other=0.0)
            v = tl.load(V + n * s_vn + offs_n[:, None] * s_vl + head + offs_d[None, :], mask=valid[:, None], other=0.0)
            b = tl.load(b_rows + offs_n[None, :], mask=row_ok[:, None] & valid[None, :], other=0.0).to(tl.float32)
            x = tl.where(valid[None, :], tl.dot(q, k) * qk_scale + b * 1.4426950408889634, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(x, 1))
            p = tl.math.exp2(x - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        base = (pid_s * tl.num_programs(1) + tl.program_id(1)) * Lq + offs_m  # partials (S, N·H, Lq), fp32
        tl.store(ACC + base[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=row_ok[:, None])
        tl.store(ML + base * 2, m_i, mask=row_ok)
        tl.store(ML + base * 2 + 1, l_i, mask=row_ok)

    _tuned_biased_kernel = autotune(_biased_configs(), key=["Lq", "Lk", "HEAD_DIM", "keys_per_split"])(
        _biased_split_kernel
    )


# How the flash kernels take their exponentials on a GPU that has the paired instructions (sm_90+);
# 0 everywhere else, and under Triton's interpreter (no inline PTX there).
PAIRED_EXP_MODE = 0  # 1 and 2 measured slower on an H200 (dev/kernel_probe.py)


def default_exp_mode(q: torch.Tensor) -> int:
    if not q.is_cuda or _capability(_cuda_index(q.device)) < 9:
        return 0
    return PAIRED_EXP_MODE


def _token_major(t: torch.Tensor) -> bool:
    return t.dim() == 3 and t.stride(-1) == 1


@functools.lru_cache(maxsize=None)
def _capability(device: int) -> int:
    return torch.cuda.get_device_capability(device)[0]


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    return _cuda_name(_cuda_index(device))


@functools.lru_cache(maxsize=None)
def _cuda_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def tma_supported(*tensors: torch.Tensor) -> bool:
    """Whether the TMA kernel can read and write these (N, L, C) tensors: a Hopper-or-later GPU (or
    Triton's interpreter, for the tests), 16-byte aligned addresses and strides, no broadcast axis."""
    if TensorDescriptor is None:
        return False
    for t in tensors:
        if t.is_cuda and _capability(_cuda_index(t.device)) < 9:
            return False
        step = 16 // t.element_size()
        if t.data_ptr() % 16 or any(s == 0 or s % step for s in t.stride()[:-1]) or t.stride(-1) != 1:
            return False
    return True


def _descriptor(t: torch.Tensor, head_dim: int) -> "TensorDescriptor":
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 64, head_dim])  # blocks set per config


def launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    key_mask: Optional[torch.Tensor] = None,
    config: Optional["triton.Config"] = None,
    tma: Optional[bool] = None,
    exp_mode: Optional[int] = None,
) -> torch.Tensor:
    """Run the kernel: (N, Lq, H·d) queries over (N, Lk, H·d) keys/values, H heads -> (N, Lq, H·d).

    ``key_mask``: (N, Lk) bool, True = attend (padding of text prompts). ``config``: fixed block
    sizes / warps / stages (probes, the interpreter in the tests); default: autotuned over
    :func:`_configs` (:func:`_tma_configs`) on the first call per shape. ``tma``: load tiles with
    the TMA unit (no key mask; default: where :func:`tma_supported`). ``exp_mode``: how the
    exponentials are taken (see ``_online_softmax``; default :func:`default_exp_mode`).
    """
    if exp_mode is None:
        exp_mode = default_exp_mode(q)
    n, lq, c = q.shape
    lk = k.shape[1]
    d = c // heads
    out = torch.empty(n, lq, c, device=q.device, dtype=q.dtype)
    qk_scale = _qk_scale(d)
    if tma is None:
        tma = key_mask is None and tma_supported(q, k, v, out)
    if tma:
        descs = [_descriptor(t, d) for t in (q, k, v, out)]

        def run(cfg: "triton.Config") -> None:
            _tma_blocks(descs, cfg, d)
            _tma_attention_kernel[(triton.cdiv(lq, cfg.kwargs["BLOCK_M"]), n * heads)](
                *descs,
                lq,
                lk,
                heads,
                qk_scale,
                HEAD_DIM=d,
                EXP_MODE=exp_mode,
                num_warps=cfg.num_warps,
                num_stages=cfg.num_stages,
                **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}),
                **cfg.kwargs,
            )

        if config is None:
            config = _tma_tuner.choose((_device_name(q.device), lq, lk, d, exp_mode, str(q.dtype)), run)
        run(config)
        return out
    km = key_mask if key_mask is not None else out  # any pointer; not read without a mask
    args = (
        q,
        k,
        v,
        out,
        km,
        lq,
        lk,
        heads,
        qk_scale,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        out.stride(0),
        out.stride(1),
        km.stride(0) if key_mask is not None else 0,
    )
    meta = dict(HEAD_DIM=d, HAS_KEY_MASK=key_mask is not None, EXP_MODE=exp_mode)
    if config is None:
        grid = lambda m: (triton.cdiv(lq, m["BLOCK_M"]), n * heads)  # noqa: E731
        _tuned_kernel[grid](*args, **meta)
    else:
        grid = (triton.cdiv(lq, config.kwargs["BLOCK_M"]), n * heads)
        _attention_kernel[grid](
            *args, **meta, num_warps=config.num_warps, num_stages=config.num_stages, **config.kwargs
        )
    return out


@torch.library.custom_op("dart_ros::flash_attention", mutates_args=())
def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, key_mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """:func:`launch` (autotuned) as an opaque op for ``torch.compile`` and CUDA graphs."""
    return launch(q, k, v, heads, key_mask)


@flash_attention.register_fake
def _(q, k, v, heads, key_mask=None):
    return q.new_empty(q.shape)


def _key_splits(programs: int, lk: int, device: torch.device) -> int:
    """Key slices per query tile so that few query rows (the decoder's 201) still give every SM work."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
    return max(1, min(math.ceil(2 * sms / programs), lk // 512))


def launch_biased(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    heads: int,
    config: Optional["triton.Config"] = None,
    splits: Optional[int] = None,
) -> torch.Tensor:
    """softmax(q·kᵀ/√d + bias)·v with the keys split over programs; see :func:`biased_attention`.
    ``config``/``splits``: fixed block sizes and key splits (probes, tests); default autotuned / by SM count."""
    n, lq, c = q.shape
    lk = k.shape[1]
    d = c // heads
    splits = splits or _key_splits(math.ceil(lq / 64) * n * heads, lk, q.device)
    keys_per_split = math.ceil(math.ceil(lk / splits) / 128) * 128  # whole blocks but the last
    splits = math.ceil(lk / keys_per_split)
    acc = torch.empty(splits, n * heads, lq, d, device=q.device, dtype=torch.float32)
    ml = torch.empty(splits, n * heads, lq, 2, device=q.device, dtype=torch.float32)
    qk_scale = _qk_scale(d)
    args = (
        q,
        k,
        v,
        bias,
        acc,
        ml,
        lq,
        lk,
        heads,
        qk_scale,
        keys_per_split,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        bias.stride(0),
        bias.stride(1),
        bias.stride(2),
    )
    if config is None:
        grid = lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), n * heads, splits)  # noqa: E731
        _tuned_biased_kernel[grid](*args, HEAD_DIM=d)
    else:
        grid = (triton.cdiv(lq, config.kwargs["BLOCK_M"]), n * heads, splits)
        _biased_split_kernel[grid](
            *args, HEAD_DIM=d, num_warps=config.num_warps, num_stages=config.num_stages, **config.kwargs
        )
    m, l_ = ml.unbind(-1)  # merge the slices' partial softmaxes (log2 domain)
    w = torch.exp2(m - m.amax(0))
    o = (acc * w[..., None]).sum(0) / (l_ * w).sum(0)[..., None]  # (N·H, Lq, d)
    return o.view(n, heads, lq, d).transpose(1, 2).reshape(n, lq, c).to(q.dtype)


@torch.library.custom_op("dart_ros::biased_attention", mutates_args=())
def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, Lq, H·d) queries over (N, Lk, H·d) keys/values with an additive (N, H, Lq, Lk) bias: the
    decoder's boxRPB cross-attention. Its 201 queries give cuDNN only N·H·4 programs, each looping
    over all 5,184 keys (latency-bound at few classes); here the keys are split over programs and
    the partial softmaxes merged."""
    return launch_biased(q, k, v, bias, heads)


@biased_attention.register_fake
def _(q, k, v, bias, heads):
    return q.new_empty(q.shape)


def _is_bias(mask: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor, heads: int) -> bool:
    return (
        mask is not None
        and mask.dtype == q.dtype
        and mask.dim() == 4
        and mask.stride(3) == 1
        and tuple(mask.shape) == (q.shape[0], heads, q.shape[1], k.shape[1])
    )


def key_padding_mask(mask: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor) -> Optional[torch.Tensor]:
    """SDPA's (N, 1, 1, Lk) boolean key-padding mask as the kernel's (N, Lk); None if not of that form."""
    if mask is None or mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1:3] != (1, 1):
        return None
    if mask.shape[0] != q.shape[0] or mask.shape[3] != k.shape[1] or mask.stride(3) != 1:
        return None
    return mask[:, 0, 0, :]


def _inputs_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> bool:
    """CUDA fp16/bf16 (N, L, H·d) tensors, channels contiguous, head dimension 16-128 (power of two)."""
    if triton is None or not q.is_cuda:
        return False
    if q.dtype not in (torch.float16, torch.bfloat16) or not (q.dtype == k.dtype == v.dtype):
        return False
    if not all(_token_major(t) for t in (q, k, v)) or k.shape != v.shape or q.shape[::2] != k.shape[::2]:
        return False
    d = q.shape[-1] // heads
    return d * heads == q.shape[-1] and d in (16, 32, 64, 128)


def kernel_supports(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    mask: Optional[torch.Tensor] = None,
    min_tokens: int = MIN_TOKENS,
) -> bool:
    """Whether one of our kernels handles these inputs (else :func:`attention` uses SDPA): at least
    ``min_tokens`` queries without a mask or with a key-padding mask (:func:`flash_attention`), or
    that many keys with an additive bias (:func:`biased_attention`)."""
    if not _inputs_ok(q, k, v, heads):
        return False
    if _is_bias(mask, q, k, heads):
        return k.shape[1] >= min_tokens
    # few queries without a bias: the decoder's self- and text attention
    return (mask is None or key_padding_mask(mask, q, k) is not None) and q.shape[1] >= min_tokens


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    mask: Optional[torch.Tensor] = None,
    min_tokens: int = MIN_TOKENS,
) -> torch.Tensor:
    """(N, Lq, C) queries over (N, Lk, C) keys/values, ``heads`` heads, tokens-major in and out.
    ``min_tokens``: fewest queries (keys, with a bias) per sequence for our kernels; callers whose
    many short sequences fill the GPU anyway (the ViT's windows) pass 0."""
    if kernel_supports(q, k, v, heads, mask, min_tokens):
        if _is_bias(mask, q, k, heads):
            return biased_attention(q, k, v, mask, heads)
        return flash_attention(q, k, v, heads, key_padding_mask(mask, q, k))
    return sdpa_attention(q, k, v, heads, mask)


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """:func:`attention`'s contract on ``F.scaled_dot_product_attention`` (every other input)."""
    n, lq, c = q.shape
    d = c // heads
    q = q.reshape(n, lq, heads, d).transpose(1, 2)
    k = k.reshape(n, k.shape[1], heads, d).transpose(1, 2)
    v = v.reshape(n, v.shape[1], heads, d).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return o.transpose(1, 2).reshape(n, lq, c)
