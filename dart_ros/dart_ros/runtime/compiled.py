"""``torch.compile`` for the fast runtime's element-wise work, with an exact eager fallback.

Inductor keeps GEMMs and attention on cuBLAS / cuDNN; what it adds is fusion of the memory-bound
work between them (residual adds, LayerNorms, casts, the position-encoding adds) into Triton
kernels. Compiling happens on the first call, which every runner makes before CUDA-graph capture;
any failure (no Triton, no C++ compiler, an unsupported GPU, a tracing error) is logged once and the
eager function, which computes the same thing, is used from then on.
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


class CompiledOrEager:
    """Calls ``torch.compile(fn, **options)``; after the first failure, ``fn`` itself for good.

    Attributes:
        failed: the compiled path failed and the eager one is in use (for tests and diagnostics).
    """

    @property
    def compiled(self) -> bool:
        """A compiled function has been built (on the first call) and is in use."""
        return self._compiled is not None and not self.failed

    def __init__(self, fn: Callable, name: str, **options):
        self.fn = fn
        self.name = name
        self.options = options
        self.failed = False
        self._compiled = None

    def __call__(self, *args, **kwargs):
        if self.failed:
            return self.fn(*args, **kwargs)
        try:
            if self._compiled is None:
                self._compiled = torch.compile(self.fn, **self.options)
            return self._compiled(*args, **kwargs)
        except Exception as e:
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                raise  # the capture is broken either way; the graph runner decides (disable_compiled)
            log.warning("compiling %s failed (%s); running it eagerly", self.name, str(e).splitlines()[0][:200])
            self.failed = True
            return self.fn(*args, **kwargs)


def disable_compiled(module: torch.nn.Module) -> bool:
    """Switch every :class:`CompiledOrEager` held by ``module`` or its submodules to eager.
    Returns whether there was one (a graph runner then retries its capture eagerly)."""
    found = False
    for m in module.modules():
        for v in vars(m).values():
            if isinstance(v, CompiledOrEager) and not v.failed:
                v.failed = found = True
    return found


def capture_with_eager_fallback(
    module: torch.nn.Module, what: str, capture: Callable[[], T], fresh_pool: Callable[[], None]
) -> T:
    """Run a graph runner's ``capture()``; if it fails and ``module`` holds compiled code, switch
    that code to eager and capture once more into a fresh pool (``fresh_pool()``) instead of failing.

    Seen: compiled code that recompiles inside capture (TinyViT's lazily filled caches, torch 2.11).
    """
    try:
        return capture()
    except RuntimeError as e:
        if not disable_compiled(module):
            raise
        log.warning(
            "CUDA-graph capture of the compiled %s failed (%s); capturing it without compiled kernels",
            what,
            str(e).splitlines()[0][:160],
        )
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        fresh_pool()
        return capture()


def maybe_compiled(fn: Callable, name: str, enabled: bool, **options) -> Callable:
    """``fn`` compiled when ``enabled`` and Triton is installed (CUDA); otherwise ``fn`` unchanged."""
    if not enabled:
        return fn
    if not triton_available():
        log.info("Triton not installed: %s runs eagerly", name)
        return fn
    return CompiledOrEager(fn, name, **options)
