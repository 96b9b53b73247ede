"""``triton.autotune`` whose choices persist between processes where Triton can keep them.

The flash-attention and narrow-MLP kernels time several block configurations per shape on their
first call. With ``cache_results`` (Triton 3.2 and later) the winners are written to Triton's
cache folder (the detector's ``cache_dir``), so a second start of the node skips the timing.
"""

from __future__ import annotations

import inspect


def autotune(configs, key, **kwargs):
    import triton

    if "cache_results" in inspect.signature(triton.autotune).parameters:
        kwargs.setdefault("cache_results", True)
    return triton.autotune(configs=configs, key=key, **kwargs)
