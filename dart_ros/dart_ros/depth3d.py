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
import threading
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


class StampedBuffer:
    """The latest ``size`` messages of one stream by stamp (depth images, camera_info), for matching
    them to an image by time: approximate-time synchronisation where the image drives. Bounded, so a
    stream that outpaces the detector never grows memory; thread-safe (filled from subscription
    callbacks, read by the inference thread)."""

    def __init__(self, size: int = 10):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._items: Deque[Tuple[float, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, stamp_s: float, msg: Any) -> None:
        with self._lock:
            self._items.append((float(stamp_s), msg))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def nearest(self, stamp_s: float, slop_s: float) -> Optional[Any]:
        """The message whose stamp is closest to ``stamp_s``, if within ``slop_s``; else None."""
        with self._lock:
            if not self._items:
                return None
            t, msg = min(self._items, key=lambda e: abs(e[0] - stamp_s))
        return msg if abs(t - stamp_s) <= slop_s else None


def match_streams(stamp_s: float, buffers: Dict[str, StampedBuffer], slop_s: float) -> Optional[Dict[str, Any]]:
    """For an image stamped ``stamp_s``: the nearest message of every buffer, or None when one of
    them has nothing within ``slop_s`` (no 3D rather than 3D from another moment)."""
    out = {}
    for name, buf in buffers.items():
        msg = buf.nearest(stamp_s, slop_s)
        if msg is None:
            return None
        out[name] = msg
    return out
