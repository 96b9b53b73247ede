"""The fused boxRPB MLP kernel (dart_ros.runtime.narrow_mlp) against the two nn.Linear layers.

On the CPU the kernel runs under Triton's interpreter (a fresh process: TRITON_INTERPRET is read
when kernels are defined); on a GPU (``-m gpu``) compiled, at the decoder's 80-class shape.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import run_in_triton_interpreter

triton = pytest.importorskip("triton")


def _mlp(k_in, hidden, out, dtype=torch.float32, device="cpu"):
    from sam3.model.model_misc import MLP

    torch.manual_seed(0)
    return MLP(k_in, hidden, out, 2).to(device=device, dtype=dtype)


def check_kernel() -> None:
    from dart_ros.runtime.narrow_mlp import launch

    # (input width, hidden, outputs, rows, dtype, BLOCK_M): partial last tiles, padded outputs
    for k_in, hidden, out, rows, dtype, bm in (
        (2, 64, 8, 300, torch.float32, 32),
        (4, 32, 3, 77, torch.float16, 64),
        (2, 256, 8, 129, torch.float16, 64),
    ):
        mlp = _mlp(k_in, hidden, out, dtype)
        x = (torch.randn(3, rows, k_in) * 2).to(dtype)
        first, second = mlp.layers
        want = second(F.relu(first(x)))
        got = launch(x, first.weight, first.bias, second.weight, second.bias, block_m=bm)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        assert got.shape == want.shape
        err = (got.float() - want.float()).abs().max().item()
        assert err < tol * max(1.0, want.abs().max().item()), (k_in, hidden, out, dtype, err)


def test_kernel_matches_the_layers_in_the_interpreter():
    run_in_triton_interpreter("test_narrow_mlp", "check_kernel")


def test_narrow_mlp_runs_the_layers_where_the_kernel_does_not_apply():
    from dart_ros.runtime.narrow_mlp import kernel_supports, narrow_mlp

    mlp = _mlp(2, 64, 8)
    x = torch.randn(5, 2)
    assert not kernel_supports(x, mlp)  # CPU, fp32
    torch.testing.assert_close(narrow_mlp(x, mlp), mlp(x))
    residual = _mlp(2, 64, 2)
    residual.residual = True  # not the plain two-layer form: the module's own forward
    torch.testing.assert_close(narrow_mlp(x, residual), residual(x))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernel_matches_the_layers_at_the_decoder_shape_on_the_gpu():
    from dart_ros.runtime.narrow_mlp import kernel_supports, narrow_mlp

    mlp = _mlp(2, 256, 8, torch.bfloat16, "cuda")
    x = torch.randn(80, 200, 72, 2, device="cuda").to(torch.bfloat16)  # classes, queries, grid, (log) offsets
    assert kernel_supports(x, mlp)
    got = narrow_mlp(x, mlp)
    first, second = mlp.layers
    gemm = second(F.relu(first(x)))  # the two-GEMM bf16 path it replaces
    ref = _mlp(2, 256, 8, torch.float32, "cuda")(x.float())
    assert (got.float() - ref).abs().max() <= (gemm.float() - ref).abs().max() * 1.5 + 1e-3
