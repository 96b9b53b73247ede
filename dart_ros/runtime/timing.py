"""Host-side latency of a CUDA callable, for the offline probes and benchmarks."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch


def cuda_median_ms(fn: Callable[[], object], iters: int = 30, warmup: int = 5) -> float:
    """Median wall time of ``fn()`` in ms, the device synchronised after each call (warm-up excluded)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))
