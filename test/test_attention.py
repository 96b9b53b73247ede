"""The Triton attention kernels (dart_ros.runtime.attention) against torch's SDPA.

On the CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, read when the kernels
are defined, hence a fresh process); on a GPU (``-m gpu``) compiled, at the enc-dec's real shapes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton")


def _reference(q, k, v, heads, bias=None):
    n, lq, c = q.shape
    d = c // heads
    qh, kh, vh = (t.float().reshape(n, t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias).transpose(1, 2).reshape(n, lq, c)


def _grid_bias(by, bx, lq):
    """The (N, H, Lq, P²) bias that grid_bias_attention stands for, materialised in fp32."""
    n, q, p, heads = by.shape
    bias = torch.zeros(n, heads, lq, p, p)
    bias[:, :, lq - q:] = by.float().permute(0, 3, 1, 2)[..., :, None] + bx.float().permute(0, 3, 1, 2)[..., None, :]
    return bias.reshape(n, heads, lq, p * p)


def check_flash_kernel() -> None:
    from dart_ros.runtime import attention as att

    torch.manual_seed(0)
    # (tokens, heads, head dim, dtype, BLOCK_M, BLOCK_N): partial last query and key blocks included
    for length, heads, d, dtype, bm, bn in ((200, 2, 32, torch.float32, 32, 16), (256, 1, 16, torch.float16, 64, 32),
                                            (77, 2, 64, torch.float32, 16, 16)):
        qk = torch.randn(2, length, 2 * heads * d).to(dtype)  # q and k as halves of one projection
        q, k = qk[..., : heads * d], qk[..., heads * d:] * 3
        v = torch.randn(2, length, heads * d).to(dtype)
        out = att.launch(q, k, v, heads, triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=4, num_stages=2))
        err = (out.float() - _reference(q, k, v, heads)).abs().max().item()
        tol = 2e-3 if dtype == torch.float16 else 2e-5
        assert err < tol, (length, heads, d, dtype, err)


def check_grid_bias_kernel() -> None:
    from dart_ros.runtime import attention as att

    torch.manual_seed(0)
    # (classes, grid side P, biased queries Q, unbiased leading queries, heads, d, dtype, BLOCK_M, BLOCK_N, splits)
    for n, p, nq, row0, heads, d, dtype, bm, bn, splits in (
            (2, 12, 9, 1, 2, 32, torch.float32, 16, 32, 1), (2, 24, 20, 1, 2, 32, torch.float32, 32, 64, 4),
            (1, 24, 20, 0, 1, 16, torch.float16, 32, 64, 2), (3, 20, 6, 1, 2, 32, torch.float32, 32, 128, 3)):
        lq = nq + row0
        q = torch.randn(n, lq, 2 * heads * d)[..., : heads * d].to(dtype)
        k = (torch.randn(n, p * p, heads * d) * 2).to(dtype)
        v = torch.randn(n, p * p, heads * d).to(dtype)
        by, bx = ((torch.randn(n, nq, p, heads) * 3).to(dtype) for _ in range(2))
        cfg = triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=4, num_stages=2)
        out = att.launch_grid_bias(q, k, v, by, bx, heads, cfg, splits=splits)
        err = (out.float() - _reference(q, k, v, heads, _grid_bias(by, bx, lq))).abs().max().item()
        tol = 2e-3 if dtype == torch.float16 else 2e-5
        assert err < tol, (n, p, nq, row0, dtype, splits, err)


def _interpret(check: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    here = os.path.dirname(os.path.abspath(__file__))
    code = f"import sys; sys.path.insert(0, {here!r}); import test_attention as t; t.{check}()"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_flash_kernel_matches_sdpa_in_the_interpreter():
    _interpret("check_flash_kernel")


def test_grid_bias_kernel_matches_a_materialised_bias_in_the_interpreter():
    _interpret("check_grid_bias_kernel")


def test_attention_uses_sdpa_where_the_kernel_does_not_apply():
    from dart_ros.runtime import attention as att

    q = torch.randn(2, 64, 64)
    assert not att.kernel_supports(q, q, q, 2)  # CPU tensors
    mask = torch.ones(2, 1, 1, 64, dtype=torch.bool)
    mask[..., 40:] = False
    ref = _reference(q, q, q, 2, mask)
    assert torch.allclose(att.attention(q, q, q, 2, mask), ref, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernels_match_sdpa_at_the_encdec_shapes_on_the_gpu():
    from dart_ros.runtime import attention as att

    torch.manual_seed(0)
    n, p, heads, d, nq = 3, 72, 8, 32, 200
    dev, dt = "cuda", torch.bfloat16
    qk = torch.randn(n, p * p, 2 * heads * d, device=dev, dtype=dt)
    q, k = qk[..., : heads * d], qk[..., heads * d:]
    v = torch.randn(n, p * p, heads * d, device=dev, dtype=dt)
    assert att.kernel_supports(q, k, v, heads)
    ref = _reference(q, k, v, heads)
    bf16 = att.attention(q, k, v, heads)  # the kernel
    att.set_kernel_enabled(False)
    try:
        sdpa = att.attention(q, k, v, heads)
    finally:
        att.set_kernel_enabled(True)
    # the kernel is at least as close to fp32 as torch's own bf16 attention, up to rounding
    assert (bf16.float() - ref).abs().max() <= (sdpa.float() - ref).abs().max() * 1.5 + 1e-3

    qd = torch.randn(n, nq + 1, heads * d, device=dev, dtype=dt)
    by, bx = (torch.randn(n, nq, p, heads, device=dev, dtype=dt) * 2 for _ in range(2))
    assert att.grid_bias_supported(qd, k, v, by, bx, heads)
    out = att.grid_bias_attention(qd, k, v, by, bx, heads)
    ref = _reference(qd, k, v, heads, _grid_bias(by.cpu(), bx.cpu(), nq + 1).to(dev))
    assert (out.float() - ref).abs().max() < 2e-2
