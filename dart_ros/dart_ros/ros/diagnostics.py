"""Run-time statistics of the node and their /diagnostics report (NITROS-style keys)."""

from __future__ import annotations

import collections
import statistics
import threading
import time
from typing import Dict, List, Optional, Tuple

STAGES = ("preprocess", "backbone", "encdec", "postprocess", "total")


class NodeStats:
    """Counters and recent latencies, updated from several threads."""

    def __init__(self, window: int = 200):
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.dropped = 0
        self.bad_inputs = 0
        self.errors = 0
        self.annotated = 0
        self.frames_3d = 0  # frames whose 3D detections were published
        self.frames_without_depth = 0  # frames with no depth / camera_info close enough in time
        self.last_problem: Optional[Tuple[float, str, str]] = None  # (time, level, message)
        self._stage_ms: Dict[str, collections.deque] = {s: collections.deque(maxlen=window) for s in STAGES}
        self._e2e_ms = collections.deque(maxlen=window)
        self._mark = (time.monotonic(), 0, 0)

    def on_received(self, replaced_unprocessed: bool) -> None:
        with self._lock:
            self.received += 1
            if replaced_unprocessed:
                self.dropped += 1

    def on_dropped(self) -> None:
        with self._lock:
            self.dropped += 1

    def on_processed(self, timings_ms: Dict[str, float], receive_to_publish_ms: float) -> None:
        with self._lock:
            self.processed += 1
            for s in STAGES:
                if s in timings_ms:
                    self._stage_ms[s].append(timings_ms[s])
            self._e2e_ms.append(receive_to_publish_ms)

    def on_annotated(self) -> None:
        with self._lock:
            self.annotated += 1

    def on_3d(self, matched: bool) -> None:
        with self._lock:
            if matched:
                self.frames_3d += 1
            else:
                self.frames_without_depth += 1

    def on_problem(self, level: str, message: str, bad_input: bool) -> None:
        with self._lock:
            if bad_input:
                self.bad_inputs += 1
            else:
                self.errors += 1
            self.last_problem = (time.monotonic(), level, message)

    def snapshot(self) -> Dict[str, object]:
        """Rates since the previous snapshot, medians/p90 of recent latencies, counters."""
        with self._lock:
            now = time.monotonic()
            t0, r0, p0 = self._mark
            dt = max(now - t0, 1e-6)
            self._mark = (now, self.received, self.processed)
            out: Dict[str, object] = {
                "input_rate_hz": (self.received - r0) / dt,
                "output_rate_hz": (self.processed - p0) / dt,
                "frames_received": self.received,
                "frames_processed": self.processed,
                "total_dropped_frames": self.dropped,
                "bad_inputs": self.bad_inputs,
                "errors": self.errors,
                "annotated_frames": self.annotated,
                "frames_3d": self.frames_3d,
                "frames_without_depth": self.frames_without_depth,
            }
            for s, values in self._stage_ms.items():
                out[f"latency_{s}_ms_p50"] = _pct(values, 50)
            out["latency_total_ms_p90"] = _pct(self._stage_ms["total"], 90)
            out["latency_receive_to_publish_ms_p50"] = _pct(self._e2e_ms, 50)
            out["latency_receive_to_publish_ms_p90"] = _pct(self._e2e_ms, 90)
            out["last_problem"] = self.last_problem
            return out


def _pct(values, q) -> float:
    vals: List[float] = sorted(values)
    if not vals:
        return float("nan")
    if q == 50:
        return float(statistics.median(vals))
    k = min(len(vals) - 1, int(round(q / 100 * (len(vals) - 1))))
    return float(vals[k])


def diagnostic_status(
    name: str, hardware_id: str, snap: Dict[str, object], info: Dict[str, str], problem_window_s: float
):
    """A diagnostic_msgs/DiagnosticStatus: level and message from the latest problem (within
    ``problem_window_s``) or the state in ``info``; every statistic and fact as a key-value pair."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    status = DiagnosticStatus(name=name, hardware_id=hardware_id)
    level, message = DiagnosticStatus.OK, "running"
    problem = snap.get("last_problem")
    if problem and time.monotonic() - problem[0] < problem_window_s:
        level = DiagnosticStatus.ERROR if problem[1] == "error" else DiagnosticStatus.WARN
        message = problem[2]
    elif info.get("weights") == "random":
        level, message = DiagnosticStatus.WARN, "running with RANDOM weights (no sam3_checkpoint)"
    elif info.get("enabled") == "False":
        message = "paused (enable service)"
    elif not info.get("classes"):
        level, message = DiagnosticStatus.WARN, "no classes set"
    status.level, status.message = level, message[:500]
    for k, v in snap.items():
        if k == "last_problem":
            continue
        status.values.append(KeyValue(key=k, value=f"{v:.2f}" if isinstance(v, float) else str(v)))
    for k, v in info.items():
        status.values.append(KeyValue(key=k, value=str(v)))
    return status


def diagnostic_array(stamp, statuses):
    """A diagnostic_msgs/DiagnosticArray of ``statuses`` (the detector's, one per camera)."""
    from diagnostic_msgs.msg import DiagnosticArray

    arr = DiagnosticArray()
    arr.header.stamp = stamp
    arr.status = list(statuses)
    return arr
