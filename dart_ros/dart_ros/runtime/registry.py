"""Runtime backends by name: each builds the two stage runners of a Detector.

``eager`` (sam3's modules, any device) and ``fast`` (CUDA graphs, fused kernels) are built in; a
further backend (TensorRT engines, say) registers a builder with :func:`register_runtime` and is
then selectable as ``DetectorConfig.runtime``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Dict, Optional, Tuple

import torch

from dart_ros.runtime.interface import Runners

log = logging.getLogger(__name__)

# builder(model, config, device, dtype) -> Runners; dtype is the reduced precision or None (fp32).
Builder = Callable[..., Runners]


@dataclasses.dataclass(frozen=True)
class RuntimeSpec:
    name: str
    builder: Builder
    devices: Tuple[str, ...]  # device types it runs on
    description: str


_RUNTIMES: Dict[str, RuntimeSpec] = {}


def register_runtime(name: str, builder: Builder, devices: Tuple[str, ...], description: str = "") -> None:
    _RUNTIMES[name] = RuntimeSpec(name, builder, tuple(devices), description)


def runtime_names() -> Tuple[str, ...]:
    """Every value ``DetectorConfig.runtime`` accepts."""
    return ("auto",) + tuple(_RUNTIMES)


def resolve_runtime(name: str, device: torch.device) -> RuntimeSpec:
    """``auto`` is ``fast`` on CUDA and ``eager`` elsewhere; a named runtime must support the device."""
    if name == "auto":
        name = "fast" if device.type == "cuda" else "eager"
    spec = _RUNTIMES.get(name)
    if spec is None:
        raise ValueError(f"unknown runtime {name!r}; valid: {', '.join(runtime_names())}")
    if device.type not in spec.devices:
        raise ValueError(
            f"runtime {name!r} needs a {' or '.join(d.upper() for d in spec.devices)} device, not {device.type}"
        )
    return spec


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The compute dtype of ``precision`` on ``device``; None = fp32 (reduced precision is CUDA-only)."""
    if precision == "fp32":
        return None
    if device.type != "cuda":
        log.warning("precision %s requested on %s: running fp32 (reduced precision is CUDA-only)", precision, device)
        return None
    return torch.bfloat16 if precision == "bf16" else torch.float16


def build_runners(model, config, device: torch.device, dtype: Optional[torch.dtype]) -> Runners:
    """The runners ``config.runtime`` names, for ``model`` on ``device`` in ``dtype`` (None: fp32)."""
    return resolve_runtime(config.runtime, device).builder(model, config, device, dtype)


def _eager(*args) -> Runners:
    from dart_ros.runtime.eager import build_eager

    return build_eager(*args)


def _fast(*args) -> Runners:
    from dart_ros.runtime.fast import build_fast

    return build_fast(*args)


register_runtime("eager", _eager, ("cpu", "cuda"), "sam3's modules as they are (autocast for reduced precision)")
register_runtime("fast", _fast, ("cuda",), "fused ViT and encoder-decoder, CUDA graphs, two-stream pipelining")
