"""Latency of a CUDA callable (host-side and GPU-side), for the offline probes and benchmarks."""

from __future__ import annotations

import time
from typing import Callable, List, Tuple

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


def cuda_events_ms(fn: Callable[[], object], reps: int = 20, runs: int = 5) -> float:
    """GPU time per call in ms: ``reps`` calls back to back between two CUDA events, median of
    ``runs`` such runs (for kernels; host launch time shows only where it exceeds the GPU's)."""
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / reps)
    return float(np.median(out))


def cuda_kernels(fn: Callable[[], object], calls: int, warmup: int = 1) -> List[Tuple[str, float, float]]:
    """(name, start µs, end µs) of every device activity (kernels, copies, memsets) of ``calls``
    calls of ``fn`` under the profiler, after ``warmup`` unprofiled calls."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return [
        (e.name, e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
    ]
