"""The fast ViT's GEMMs on the cuBLASLt algorithm that measured fastest (nvmath-python, optional).

torch runs cuBLASLt's first heuristic pick for every matmul. For the ViT-H block's four GEMMs at
5,184 tokens another of the heuristic's candidates is often faster, and which one differs between
GPUs. The backbone's shapes are fixed, so :class:`GemmTuner` times the candidates once, during
the eager warm-up before graph capture, and the CUDA graph then holds the winner.

- Computed transposed, ``Wx^T (+ b)``: cuBLASLt's bias epilogue adds a vector along the result's
  rows, and the (out, tokens) column-major result is the (tokens, out) row-major tensor the block
  wants, without a copy.
- Workspace-free algorithms only: a Matmul's workspace would be shared by every graph that replays
  it (the pipeline replays two backbone graphs and the enc-dec's on other streams).
- Inside a graph capture only; eager calls keep torch's own GEMM (one Python planning object per
  call would cost more host time than it saves), so the same module runs unchanged without graphs.
- Falls back to torch where nvmath-python is missing or planning a shape fails (logged per shape).
"""

from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

try:
    from nvmath.linalg.advanced import Matmul, MatmulEpilog, MatmulOptions, MatmulPlanPreferences
except Exception:  # noqa: BLE001 - not installed, or its CUDA libraries not loadable: torch's GEMMs
    Matmul = None


def available() -> bool:
    return Matmul is not None


def torch_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gelu: bool = False
) -> torch.Tensor:
    """(M, K) -> (M, N) with torch's own GEMM; ``gelu``: tanh-GELU in the cuBLASLt epilogue (needs a bias)."""
    if gelu:
        return torch._addmm_activation(bias, x, weight.t(), use_gelu=True)
    return F.linear(x, weight, bias)


class GemmTuner:
    """``y = x Wᵀ + b`` (optionally tanh-GELU'd, as cuBLASLt's epilogue and torch's
    ``_addmm_activation`` compute it) for 2-D CUDA activations, per shape on the fastest measured
    cuBLASLt algorithm inside CUDA graph captures.

    Args:
        candidates: how many of cuBLASLt's heuristic candidates to time per shape.
        iterations: timed runs per candidate.
    """

    def __init__(self, candidates: int = 16, iterations: int = 20):
        self.candidates = candidates
        self.iterations = iterations
        self._plans: Dict[Tuple, Optional[object]] = {}  # key -> nvmath Matmul (planned, timed) or None

    @property
    def plans(self) -> Dict[Tuple, Optional[object]]:
        """GEMM shape key -> its timed nvmath plan (None: no algorithm qualified, torch runs it)."""
        return dict(self._plans)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        """(M, K) activations, (N, K) weight, (N,) bias -> (M, N)."""
        key = (tuple(x.shape), tuple(weight.shape), x.dtype, x.device, gelu)
        capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
        if not capturing:
            if key not in self._plans and self._eligible(x, weight, bias):
                self._plans[key] = self._plan(x, weight, bias, gelu, key)
            return torch_linear(x, weight, bias, gelu)
        mm = self._plans.get(key)
        if mm is None:
            return torch_linear(x, weight, bias, gelu)
        mm.reset_operands_unchecked(a=weight, b=x.t(), epilog_inputs={"bias": bias})
        return mm.execute(stream=torch.cuda.current_stream()).t()

    @staticmethod
    def _eligible(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
        return (
            Matmul is not None
            and x.is_cuda
            and x.dim() == 2
            and x.is_contiguous()
            and weight.is_contiguous()
            and bias is not None
            and bias.is_contiguous()
            and x.dtype in (torch.bfloat16, torch.float16)
            and x.dtype == weight.dtype == bias.dtype
        )

    def _plan(self, x, weight, bias, gelu, key) -> Optional[object]:
        try:
            stream = torch.cuda.current_stream()
            mm = Matmul(weight, x.t(), options=MatmulOptions(memory_limit=0), stream=stream)
            epilog = MatmulEpilog.GELU_BIAS if gelu else MatmulEpilog.BIAS
            mm.plan(
                preferences=MatmulPlanPreferences(limit=self.candidates),
                epilog=epilog,
                epilog_inputs={"bias": bias},
                stream=stream,
            )
            mm.autotune(iterations=self.iterations, stream=stream)
            best = mm.algorithms[0]
            log.info("cuBLASLt for %s x %s: tile %s, cluster %s", key[0], key[1], best.tile, best.cluster_shape)
            return mm
        except Exception as e:  # noqa: BLE001 - any nvmath/cuBLASLt refusal: torch's GEMM for this shape
            log.warning("cuBLASLt autotuning failed for %s (%s); torch's GEMM is used there", key[:2], e)
            return None
