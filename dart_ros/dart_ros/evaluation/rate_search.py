"""Maximum sustainable input rate of a node, by the ros2_benchmark method (pure logic, no ROS).

A *probe* plays frames at a fixed rate for a while and pairs every output with its input by a
message key (the node copies input headers, so the key rides in ``header.stamp``). A probe passes
when the output keeps up with the playback (its mean rate within a tolerance of the playback
rate) and at most 5 % of the frames sent are missing. :func:`search_max_rate` finds the highest
passing rate as ros2_benchmark's auto-tuner does: a warm-up probe, a binary search between two
bounds down to a terminal width, then a linear scan upward from the last passing rate until the
first failure. Unlike ros2_benchmark, tolerances are relative to the rate (a CPU node at 2 Hz and
a GPU node at 60 Hz are searched alike) and latencies are reported as percentiles.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np


@dataclasses.dataclass
class ProbeResult:
    """What one probe measured. Times in seconds on one monotonic clock; rates in Hz; ms below."""

    rate_hz: float  # requested playback rate
    sent: int
    received: int  # outputs whose key was sent in this probe
    playback_hz: float  # achieved: (sent - 1) / (last send - first send)
    output_hz: float  # (received - 1) / (last receive - first receive)
    latency_ms: Dict[str, float]  # input sent -> output received: min, mean, p50, p90, p99, max
    jitter_ms: Dict[str, float]  # |change of the interval between consecutive outputs|: mean, max, std

    @property
    def missed(self) -> int:
        return self.sent - self.received

    @property
    def missed_fraction(self) -> float:
        return self.missed / self.sent if self.sent else 0.0

    def as_dict(self) -> Dict[str, object]:
        return {**dataclasses.asdict(self), "missed": self.missed, "missed_fraction": self.missed_fraction}


def _rate(times: Sequence[float]) -> float:
    span = max(times) - min(times) if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span > 0 else 0.0


def probe_result(rate_hz: float, sent: Dict[int, float], received: Dict[int, float]) -> ProbeResult:
    """A probe's metrics from send and receive times keyed by message key. Outputs whose key was not
    sent in this probe (late answers to an earlier one) are ignored."""
    keys = [k for k in sent if k in received]
    recv_times = sorted(received[k] for k in keys)
    lat = np.array([(received[k] - sent[k]) * 1e3 for k in keys])
    latency = {}
    if lat.size:
        latency = {
            "min": float(lat.min()),
            "mean": float(lat.mean()),
            "p50": float(np.percentile(lat, 50)),
            "p90": float(np.percentile(lat, 90)),
            "p99": float(np.percentile(lat, 99)),
            "max": float(lat.max()),
        }
    jitter = {}
    if len(recv_times) > 2:
        j = np.abs(np.diff(np.diff(recv_times))) * 1e3
        jitter = {"mean": float(j.mean()), "max": float(j.max()), "std": float(j.std())}
    return ProbeResult(rate_hz, len(sent), len(keys), _rate(list(sent.values())), _rate(recv_times), latency, jitter)


def passes(result: ProbeResult, rate_tolerance: float = 0.1, max_missed_fraction: float = 0.05) -> bool:
    """Output rate within ``rate_tolerance`` (a fraction) of the playback rate, and at most
    ``max_missed_fraction`` of the frames sent missing (rounded up, as ros2_benchmark does)."""
    if result.sent == 0 or result.received == 0:
        return False
    keeps_up = result.output_hz >= result.playback_hz * (1.0 - rate_tolerance)
    return keeps_up and result.missed <= math.ceil(max_missed_fraction * result.sent)


@dataclasses.dataclass
class SearchResult:
    max_rate_hz: Optional[float]  # None: even the lower bound failed
    probes: List[ProbeResult]  # in the order run (the warm-up probe not included)
    passed: List[bool]  # each probe judged with the tolerance of its phase
    at_upper_bound: bool  # the answer is the upper bound: widen the window to know more


def search_max_rate(
    probe: Callable[[float], ProbeResult],
    lower: float,
    upper: float,
    width: float,
    step: float,
    binary_tolerance: float = 0.1,
    linear_tolerance: float = 0.05,
    max_missed_fraction: float = 0.05,
) -> SearchResult:
    """ros2_benchmark's auto-tuner over ``probe(rate)``: a warm-up probe at the midpoint (not judged),
    binary search on [lower, upper] until the window is at most ``width`` Hz wide, then a linear scan
    upward in ``step`` Hz from the last passing rate (stricter tolerance) until the first failure."""
    if not 0 < lower <= upper or width <= 0 or step <= 0:
        raise ValueError("need 0 < lower <= upper, width > 0 and step > 0")
    probes: List[ProbeResult] = []
    passed: List[bool] = []

    def run(rate: float, tolerance: float) -> bool:
        probes.append(probe(rate))
        passed.append(passes(probes[-1], tolerance, max_missed_fraction))
        return passed[-1]

    probe((lower + upper) / 2)  # warm-up: first frames pay for allocations, discovery, autotuning
    if not run(lower, binary_tolerance):
        return SearchResult(None, probes, passed, False)
    lo, hi = lower, upper
    if run(upper, binary_tolerance):
        lo = hi
    while hi - lo > width:
        mid = (lo + hi) / 2
        if run(mid, binary_tolerance):
            lo = mid
        else:
            hi = mid
    rate = lo + step
    while rate <= upper and run(rate, linear_tolerance):
        lo, rate = rate, rate + step
    return SearchResult(lo, probes, passed, lo >= upper)


def conclude(values: Sequence[float], how: str = "mean") -> float:
    """ros2_benchmark's conclusion over iterations: drop the best and the worst (with three or more),
    then the mean, max or min of the rest."""
    v = sorted(values)
    if not v:
        return float("nan")
    if len(v) >= 3:
        v = v[1:-1]
    return {"mean": float(np.mean(v)), "max": float(max(v)), "min": float(min(v))}[how]
