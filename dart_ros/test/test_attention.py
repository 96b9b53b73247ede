"""The Triton attention kernels (dart_ros.runtime.attention) against torch's SDPA.

On the CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, read when the kernels
are defined, hence a fresh process); on a GPU (``-m gpu``) compiled, at the enc-dec's real shapes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import run_in_triton_interpreter

triton = pytest.importorskip("triton")


def _reference(q, k, v, heads, bias=None):
    n, lq, c = q.shape
    d = c // heads
    qh, kh, vh = (t.float().reshape(n, t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
    if bias is not None and bias.is_floating_point():
        bias = bias.float()
    return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias).transpose(1, 2).reshape(n, lq, c)


def check_flash_kernel() -> None:
    from dart_ros.runtime import attention as att

    torch.manual_seed(0)
    # (queries, keys, heads, head dim, dtype, key mask, BLOCK_M, BLOCK_N): partial last blocks included
    for lq, lk, heads, d, dtype, masked, bm, bn in (
        (200, 200, 2, 32, torch.float32, False, 32, 16),
        (256, 256, 1, 16, torch.float16, False, 64, 32),
        (77, 77, 2, 64, torch.float32, False, 16, 16),
        (150, 33, 2, 32, torch.float32, True, 32, 16),
        (64, 40, 1, 32, torch.float16, True, 32, 64),
    ):
        qk = torch.randn(2, lq, 2 * heads * d).to(dtype)  # q as half of one projection
        q = qk[..., : heads * d]
        k = (torch.randn(2, lk, heads * d) * 3).to(dtype)
        v = torch.randn(2, lk, heads * d).to(dtype)
        mask = None
        if masked:  # text prompts of different lengths, padded
            mask = torch.ones(2, 1, 1, lk, dtype=torch.bool)
            mask[0, ..., lk // 2 :] = False
            mask[1, ..., 5:9] = False
        cfg = triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=4, num_stages=2)
        ref = _reference(q, k, v, heads, mask)
        tol = 2e-3 if dtype == torch.float16 else 2e-5
        # pointer loads everywhere; TMA descriptors where there is no key mask
        for tma in (False, True) if not masked else (False,):
            assert not tma or att.tma_supported(q, k, v)
            out = att.launch(q, k, v, heads, att.key_padding_mask(mask, q, k), cfg, tma=tma)
            err = (out.float() - ref).abs().max().item()
            assert err < tol, (lq, lk, heads, d, dtype, masked, tma, err)
    # a query broadcast over the classes has no TMA descriptor: pointer loads, same result
    q = torch.randn(1, 70, 64).expand(2, -1, -1)
    k, v = torch.randn(2, 50, 64), torch.randn(2, 50, 64)
    assert not att.tma_supported(q, k, v)
    out = att.launch(q, k, v, 2, config=triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=2))
    assert (out - _reference(q, k, v, 2)).abs().max().item() < 2e-5


def check_biased_kernel() -> None:
    from dart_ros.runtime import attention as att

    torch.manual_seed(0)
    # (classes, queries, keys, heads, d, dtype, BLOCK_M, BLOCK_N, key splits): partial blocks and slices
    for n, lq, lk, heads, d, dtype, bm, bn, splits in (
        (2, 21, 144, 2, 32, torch.float32, 16, 32, 1),
        (2, 21, 576, 2, 32, torch.float32, 32, 64, 4),
        (1, 40, 400, 1, 16, torch.float16, 32, 64, 2),
        (3, 7, 300, 2, 32, torch.float32, 32, 128, 3),
    ):
        q = torch.randn(n, lq, 2 * heads * d)[..., : heads * d].to(dtype)
        k = (torch.randn(n, lk, heads * d) * 2).to(dtype)
        v = torch.randn(n, lk, heads * d).to(dtype)
        bias = (torch.randn(n, heads, lq, lk) * 3).to(dtype)
        bias[:, :, 0] = 0  # as the presence token's row
        cfg = triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=4, num_stages=2)
        out = att.launch_biased(q, k, v, bias, heads, cfg, splits=splits)
        err = (out.float() - _reference(q, k, v, heads, bias.float())).abs().max().item()
        tol = 2e-3 if dtype == torch.float16 else 2e-5
        assert err < tol, (n, lq, lk, dtype, splits, err)


def test_flash_kernel_matches_sdpa_in_the_interpreter():
    run_in_triton_interpreter("test_attention", "check_flash_kernel")


def test_biased_kernel_matches_sdpa_in_the_interpreter():
    run_in_triton_interpreter("test_attention", "check_biased_kernel")


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
def test_kernels_match_sdpa_at_the_encdec_and_vit_shapes_on_the_gpu():
    from dart_ros.runtime import attention as att

    torch.manual_seed(0)
    n, tokens, heads, d, text = 3, 72 * 72, 8, 32, 33
    dev, dt = "cuda", torch.bfloat16
    qk = torch.randn(n, tokens, 2 * heads * d, device=dev, dtype=dt)
    q, k = qk[..., : heads * d], qk[..., heads * d :]
    v = torch.randn(n, tokens, heads * d, device=dev, dtype=dt)
    kt, vt = (torch.randn(n, text, heads * d, device=dev, dtype=dt) for _ in range(2))
    mask = torch.ones(n, 1, 1, text, dtype=torch.bool, device=dev)
    mask[0, ..., 10:] = False
    qd = torch.randn(n, 201, heads * d, device=dev, dtype=dt)
    bias = torch.randn(n, heads, 201, tokens, device=dev, dtype=dt) * 2
    # the ViT backbone: 16 heads of 64, q/k as RoPE output (S, L, 2, C), v from qkv (S, L, 3, C);
    # 9 windows of 576 tokens (below MIN_TOKENS: the caller passes min_tokens=0) and one global sequence
    vit = []
    for seqs, length in ((9, 576), (1, 5184)):
        rope_qk = torch.randn(seqs, length, 2, 1024, device=dev, dtype=dt)
        qkv = torch.randn(seqs, length, 3, 1024, device=dev, dtype=dt)
        vit.append((rope_qk[:, :, 0], rope_qk[:, :, 1], qkv[:, :, 2], 16))
    cases = [
        (a, {})
        for a in (
            (q, k, v, heads),
            (q, kt, vt, heads, mask),
            (q[:1].expand(n, -1, -1), kt, vt, heads, mask),
            (qd, k, v, heads, bias),
        )
    ] + [(a, {"min_tokens": 0}) for a in vit]
    if torch.cuda.get_device_capability()[0] >= 9:  # the self-attentions' tiles by TMA there
        assert att.tma_supported(q, k, v) and all(att.tma_supported(*a[:3]) for a in vit)
    for args, kw in cases:
        assert att.kernel_supports(*args, **kw)
        ref = _reference(*args)
        ours = att.attention(*args, **kw)
        sdpa = att.sdpa_attention(*args)
        # at least as close to fp32 as torch's own bf16 attention, up to rounding
        assert (ours.float() - ref).abs().max() <= (sdpa.float() - ref).abs().max() * 1.5 + 1e-3
    if torch.cuda.get_device_capability()[0] >= 9:  # paired exponentials (exp_mode 1, 2): as close as mode 0
        for args in ((q, k, v, heads), (q, kt, vt, heads, mask)):
            key_mask = att.key_padding_mask(args[4], q, args[1]) if len(args) > 4 else None
            ref = _reference(*args)
            err0 = (att.launch(*args[:4], key_mask, exp_mode=0).float() - ref).abs().max()
            for mode in (1, 2):
                err = (att.launch(*args[:4], key_mask, exp_mode=mode).float() - ref).abs().max()
                assert err <= err0 * 1.5 + 1e-3, (mode, err, err0)
