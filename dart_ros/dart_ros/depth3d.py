"""3D boxes from 2D detections and a registered depth image (pure functions, no ROS).

For each 2D box: the depth of the object is a robust statistic of the valid depth pixels in the
box's central part (``inner_fraction`` of its width and height: the edges of a box hold
background); the centre is the box centre back-projected at that depth through the pinhole
intrinsics; the width and height are the box extent at that depth; the extent along the optical
axis is the spread of depths in the central part (``spread_percentiles``; 0 for a surface facing
the camera). Coordinates are the camera's optical frame (x right, y down, z forward, metres).

Invalid depth — NaN, zero, infinite, or outside [``min_depth_m``, ``max_depth_m``] — is ignored; a
box with too few valid pixels (``min_valid_fraction``) gets no 3D box rather than a wrong one.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any, Deque, Dict, Optional, Sequence, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of the depth image (``camera_info.k``: fx, 0, cx; 0, fy, cy; 0, 0, 1)."""

    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_k(cls, k: Sequence[float]) -> "Intrinsics":
        k = [float(v) for v in k]
        if len(k) != 9 or k[0] <= 0 or k[4] <= 0:
            raise ValueError(f"camera_info K must be 9 numbers with fx, fy > 0, got {k}")
        return cls(fx=k[0], fy=k[4], cx=k[2], cy=k[5])


@dataclasses.dataclass(frozen=True)
class Depth3DConfig:
    min_depth_m: float = 0.1
    max_depth_m: float = 20.0
    inner_fraction: float = 0.5
    min_valid_fraction: float = 0.2
    depth_percentile: float = 50.0
    spread_percentiles: Tuple[float, float] = (10.0, 90.0)


@dataclasses.dataclass(frozen=True)
class Box3D:
    center: Tuple[float, float, float]  # metres, optical frame
    size: Tuple[float, float, float]  # x (width), y (height), z (depth extent)
    valid_fraction: float


def depth_to_metres(raw: np.ndarray, encoding: str) -> np.ndarray:
    """A depth image as float32 metres with NaN where there is no measurement: ``16UC1`` / ``mono16``
    in millimetres (0 = none), ``32FC1`` in metres (0, NaN or inf = none)."""
    if encoding in ("16UC1", "mono16"):
        out = raw.astype(np.float32) * 1e-3
        out[raw == 0] = np.nan
        return out
    if encoding == "32FC1":
        out = raw.astype(np.float32, copy=True)
        out[~np.isfinite(out) | (out <= 0)] = np.nan
        return out
    raise ValueError(f"depth encoding {encoding!r} is not 16UC1 (mm) or 32FC1 (m)")


def box_to_3d(
    box_xyxy: Sequence[float], depth_m: np.ndarray, k: Intrinsics, cfg: Depth3DConfig = Depth3DConfig()
) -> Optional[Box3D]:
    """The 3D box of one 2D box (pixels of the depth image), or None without enough valid depth."""
    h, w = depth_m.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    if not (x2 > x1 and y2 > y1):
        return None
    mx, my = (x2 - x1) * (1 - cfg.inner_fraction) / 2, (y2 - y1) * (1 - cfg.inner_fraction) / 2
    c1, c2 = int(np.clip(np.floor(x1 + mx), 0, w)), int(np.clip(np.ceil(x2 - mx), 0, w))
    r1, r2 = int(np.clip(np.floor(y1 + my), 0, h)), int(np.clip(np.ceil(y2 - my), 0, h))
    patch = depth_m[r1:r2, c1:c2]
    if patch.size == 0:
        return None
    valid = patch[np.isfinite(patch) & (patch >= cfg.min_depth_m) & (patch <= cfg.max_depth_m)]
    fraction = valid.size / patch.size
    if fraction < cfg.min_valid_fraction:
        return None
    z = float(np.percentile(valid, cfg.depth_percentile))
    lo, hi = np.percentile(valid, cfg.spread_percentiles)
    u, v = (x1 + x2) / 2, (y1 + y2) / 2
    center = ((u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z)
    size = ((x2 - x1) * z / k.fx, (y2 - y1) * z / k.fy, float(hi - lo))
    return Box3D(center=center, size=size, valid_fraction=fraction)


class ApproximateSync:
    """Groups messages of several streams whose stamps lie within ``slop_s`` of each other (image,
    depth, camera_info), newest group first; each stream keeps at most ``queue`` messages, so a
    stream that stops never grows memory. ``add`` returns a complete group or None."""

    def __init__(self, streams: Sequence[str], slop_s: float = 0.05, queue: int = 10):
        if slop_s < 0 or queue < 1:
            raise ValueError("slop_s must be >= 0 and queue >= 1")
        self.streams = tuple(streams)
        self.slop_s, self.queue = slop_s, queue
        self._q: Dict[str, Deque[Tuple[float, Any]]] = {s: deque(maxlen=queue) for s in self.streams}

    def add(self, stream: str, stamp_s: float, msg: Any) -> Optional[Dict[str, Any]]:
        if stream not in self._q:
            raise KeyError(f"unknown stream {stream!r}; streams: {self.streams}")
        self._q[stream].append((float(stamp_s), msg))
        # the newest message of this stream against the closest of every other stream
        group, stamps = {stream: msg}, [float(stamp_s)]
        for other in self.streams:
            if other == stream:
                continue
            if not self._q[other]:
                return None
            t, m = min(self._q[other], key=lambda e: abs(e[0] - stamp_s))
            if abs(t - stamp_s) > self.slop_s:
                return None
            group[other] = m
            stamps.append(t)
        newest = max(stamps)
        for s in self.streams:  # everything up to the matched group is consumed
            while self._q[s] and self._q[s][0][0] <= newest + 1e-9:
                self._q[s].popleft()
        return group
