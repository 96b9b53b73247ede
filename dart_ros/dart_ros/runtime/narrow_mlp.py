"""sam3's boxRPB MLPs (2 inputs -> 256 hidden -> 8 heads) as one Triton kernel.

The decoder evaluates them for every class, query, layer and row/column of the feature grid
(80 classes: 1.15 M positions per layer and axis). As two GEMMs the first has K = 2, which no
tensor-core kernel is built for (cuBLAS picks an sm80 CUTLASS kernel with 4-byte alignment), and
the 256-wide hidden activation goes to memory and back, a sizeable share of the enc-dec at many
classes. Here the first layer is K FMAs per hidden
unit in registers, the ReLU'd hidden tile (rounded to the compute dtype, as the GEMM path rounds
it) goes straight into a tensor-core product with the second layer, and only the H outputs are
written.

:func:`narrow_mlp` is the entry point: the kernel on CUDA for fp16/bf16 inputs and a plain
two-layer ReLU MLP with a narrow input and output, the layers themselves otherwise.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: narrow_mlp() runs the layers
    triton = None

from dart_ros.runtime.autotune import autotune  # noqa: E402

MAX_IN, MAX_HIDDEN, MAX_OUT = 8, 512, 64

if triton is not None:

    @autotune(
        configs=[triton.Config({"BLOCK_M": bm}, num_warps=w) for bm, w in ((64, 4), (128, 8), (128, 4))],
        key=["K_IN", "HIDDEN", "OUT_PAD"],
    )
    @triton.jit
    def _narrow_mlp_kernel(
        X,
        W1,
        B1,
        W2,
        B2,
        Y,
        M,
        n_out,
        stride_xm,
        stride_ym,
        K_IN: tl.constexpr,
        HIDDEN: tl.constexpr,
        OUT_PAD: tl.constexpr,
        BLOCK_M: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        live = rows < M
        hid = tl.arange(0, HIDDEN)
        h = tl.zeros((BLOCK_M, HIDDEN), dtype=tl.float32) + tl.load(B1 + hid).to(tl.float32)[None, :]
        for i in tl.static_range(K_IN):  # layer 1: K_IN outer products (W1 is (HIDDEN, K_IN))
            x = tl.load(X + rows * stride_xm + i, mask=live, other=0.0).to(tl.float32)
            h += x[:, None] * tl.load(W1 + hid * K_IN + i).to(tl.float32)[None, :]
        h = tl.maximum(h, 0.0).to(X.dtype.element_ty)
        cols = tl.arange(0, OUT_PAD)
        w2 = tl.load(W2 + cols[None, :] * HIDDEN + hid[:, None], mask=cols[None, :] < n_out, other=0.0)
        y = tl.dot(h, w2) + tl.load(B2 + cols, mask=cols < n_out, other=0.0).to(tl.float32)[None, :]
        tl.store(
            Y + rows[:, None] * stride_ym + cols[None, :],
            y.to(Y.dtype.element_ty),
            mask=live[:, None] & (cols[None, :] < n_out),
        )


def _plain_two_layer(mlp: nn.Module) -> bool:
    layers = getattr(mlp, "layers", None)
    return (
        layers is not None
        and len(layers) == 2
        and not getattr(mlp, "residual", False)
        and isinstance(getattr(mlp, "out_norm", nn.Identity()), nn.Identity)
        and isinstance(getattr(mlp, "drop", nn.Identity()), (nn.Identity, nn.Dropout))
        and all(isinstance(lin, nn.Linear) and lin.bias is not None for lin in layers)
    )


def kernel_supports(x: torch.Tensor, mlp: nn.Module) -> bool:
    if triton is None or not x.is_cuda or x.dtype not in (torch.float16, torch.bfloat16) or not _plain_two_layer(mlp):
        return False
    first, second = mlp.layers
    hidden = first.out_features
    return (
        first.in_features <= MAX_IN
        and second.out_features <= MAX_OUT
        and hidden <= MAX_HIDDEN
        and hidden >= 16
        and hidden & (hidden - 1) == 0
        and first.weight.dtype == x.dtype
        and second.weight.dtype == x.dtype
        and x.stride(-1) == 1
    )


def launch(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    block_m: Optional[int] = None,
) -> torch.Tensor:
    """relu(x @ w1ᵀ + b1) @ w2ᵀ + b2 over the last axis; ``block_m``: fixed tile (tests), else autotuned."""
    k_in = x.shape[-1]
    flat = x.reshape(-1, k_in)
    m, n_out = flat.shape[0], w2.shape[0]
    y = torch.empty(m, n_out, device=x.device, dtype=x.dtype)
    args = (flat, w1.contiguous(), b1, w2.contiguous(), b2, y, m, n_out, flat.stride(0), y.stride(0))
    meta = dict(K_IN=k_in, HIDDEN=w1.shape[0], OUT_PAD=max(16, triton.next_power_of_2(n_out)))
    if block_m is None:
        _narrow_mlp_kernel[lambda c: (triton.cdiv(m, c["BLOCK_M"]),)](*args, **meta)
    else:
        _narrow_mlp_kernel.fn[(triton.cdiv(m, block_m),)](*args, **meta, BLOCK_M=block_m, num_warps=4)
    return y.view(*x.shape[:-1], n_out)


@torch.library.custom_op("dart_ros::narrow_mlp", mutates_args=())
def _narrow_mlp_op(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
) -> torch.Tensor:
    return launch(x, w1, b1, w2, b2)


@_narrow_mlp_op.register_fake
def _(x, w1, b1, w2, b2):
    return x.new_empty(*x.shape[:-1], w2.shape[0])


def narrow_mlp(x: torch.Tensor, mlp: nn.Module) -> torch.Tensor:
    """``mlp(x)`` for sam3's two-layer ReLU ``MLP`` (fused kernel where supported)."""
    if kernel_supports(x, mlp):
        first, second = mlp.layers
        return _narrow_mlp_op(x, first.weight, first.bias, second.weight, second.bias)
    if _plain_two_layer(mlp):
        first, second = mlp.layers
        return second(F.relu(first(x)))
    return mlp(x)
