"""Multi-object tracking of detections across frames: stable IDs, ByteTrack's association.

ByteTrack (Zhang et al., ECCV 2022): detections above ``high_threshold`` are matched first to every
live track (IoU against Kalman-predicted boxes, Hungarian assignment); the low-score ones left
over (between ``low_threshold`` and ``high_threshold``: often an occluded object) are then matched
to the tracks still unmatched, so a track survives a partial occlusion instead of being replaced.
A track unseen for ``track_buffer`` frames is dropped; a new track needs a second sighting before
it gets an ID (except on the first frame). Motion: a constant-velocity Kalman filter on
(centre x, centre y, aspect ratio, height), as in SORT/DeepSORT/ByteTrack.

Why not a library: Roboflow's ``trackers`` (the maintained ByteTrack) needs numpy >= 2 and
opencv-python, which would replace a ROS distribution's numpy 1.x and collide with
opencv-python-headless; the AGPL trackers (boxmot, ultralytics) cannot ship in an Apache-2.0
package. This module needs numpy and scipy's assignment solver only.

IDs are unique over the tracker's lifetime, across classes, and never reused. Tracks are kept per
class name (``per_class=True``) or across classes; a vocabulary change needs no reset: a class that
is no longer detected ages out, a new class starts fresh tracks.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np

TRACKING_MODES = ("off", "per_class", "agnostic")


@dataclasses.dataclass
class TrackerConfig:
    """high_threshold / low_threshold: the two association passes (see the module doc);
    new_track_threshold: lowest score that starts a track (None: high_threshold + 0.1, as in
    ByteTrack); match_iou / low_match_iou: lowest IoU of
    a match in the first / second pass; track_buffer: frames a lost track is kept;
    per_class: tracks never change class (False: one pool, a track takes its detection's class)."""

    high_threshold: float = 0.5
    low_threshold: float = 0.1
    new_track_threshold: Optional[float] = None
    match_iou: float = 0.2
    low_match_iou: float = 0.5
    track_buffer: int = 30
    per_class: bool = True

    def validate(self) -> "TrackerConfig":
        if not 0 <= self.low_threshold <= self.high_threshold <= 1:
            raise ValueError("tracking thresholds must satisfy 0 <= low <= high <= 1")
        if self.new_track_threshold is None:
            self.new_track_threshold = min(self.high_threshold + 0.1, 1.0)
        if self.track_buffer < 1:
            raise ValueError(f"track_buffer must be >= 1 frame, got {self.track_buffer}")
        return self


class _Kalman:
    """Constant-velocity Kalman filter on (cx, cy, a, h) and their velocities (SORT's model, noise
    scaled by the box height as in DeepSORT)."""

    F = np.eye(8)
    F[:4, 4:] = np.eye(4)
    H = np.eye(4, 8)
    POS, VEL = 1.0 / 20, 1.0 / 160

    def __init__(self, z: np.ndarray):
        self.x = np.r_[z, np.zeros(4)]
        h = z[3]
        std = [2 * self.POS * h, 2 * self.POS * h, 1e-2, 2 * self.POS * h] + [10 * self.VEL * h] * 2 + [1e-5]
        std += [10 * self.VEL * h]
        self.P = np.diag(np.square(std))

    def predict(self) -> None:
        h = self.x[3]
        q = [self.POS * h, self.POS * h, 1e-2, self.POS * h, self.VEL * h, self.VEL * h, 1e-5, self.VEL * h]
        self.x = self.F @ self.x
        self.P = self.F @ self.P @ self.F.T + np.diag(np.square(q))

    def update(self, z: np.ndarray) -> None:
        h = self.x[3]
        r = np.diag(np.square([self.POS * h, self.POS * h, 1e-1, self.POS * h]))
        s = self.H @ self.P @ self.H.T + r
        k = np.linalg.solve(s, self.H @ self.P).T
        self.x = self.x + k @ (z - self.H @ self.x)
        self.P = (np.eye(8) - k @ self.H) @ self.P


def _to_z(box: np.ndarray) -> np.ndarray:
    w, h = max(box[2] - box[0], 1e-3), max(box[3] - box[1], 1e-3)
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, w / h, h])


def _to_box(x: np.ndarray) -> np.ndarray:
    cx, cy, a, h = x[:4]
    h = max(h, 1e-3)
    w = max(a, 1e-3) * h
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), xyxy."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _assign(tracks: List["_Track"], boxes: np.ndarray, min_iou: float):
    """Hungarian assignment on IoU; pairs below ``min_iou`` are not matches."""
    from scipy.optimize import linear_sum_assignment

    if not tracks or len(boxes) == 0:
        return [], list(range(len(tracks))), list(range(len(boxes)))
    iou = iou_matrix(np.stack([t.box for t in tracks]), boxes)
    rows, cols = linear_sum_assignment(-iou)
    pairs = [(r, c) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= min_iou]
    matched_t, matched_d = {r for r, _ in pairs}, {c for _, c in pairs}
    return (
        pairs,
        [i for i in range(len(tracks)) if i not in matched_t],
        [j for j in range(len(boxes)) if j not in matched_d],
    )


class _Track:
    def __init__(self, box: np.ndarray, confirmed: bool):
        self.kf = _Kalman(_to_z(box))
        self.id: Optional[int] = None
        self.confirmed = confirmed
        self.lost_frames = 0

    @property
    def box(self) -> np.ndarray:
        return _to_box(self.kf.x)

    def predict(self) -> None:
        if self.lost_frames:  # a lost track's size is not extrapolated (it would shrink or explode)
            self.kf.x[7] = 0.0
        self.kf.predict()

    def update(self, box: np.ndarray) -> None:
        self.kf.update(_to_z(box))
        self.lost_frames = 0


class Tracker:
    """Stable IDs for a stream of detections (one tracker per camera).

    ``update(boxes, scores, labels)`` takes one frame's detections (xyxy pixels, scores, class
    names) and returns the track ID of each (``None`` where a detection starts no confirmed track).
    """

    def __init__(self, config: Optional[TrackerConfig] = None):
        self.config = (config or TrackerConfig()).validate()
        self._pools: Dict[str, List[_Track]] = {}
        self._next_id = 1
        self._frames = 0

    @property
    def live_tracks(self) -> int:
        return sum(1 for pool in self._pools.values() for t in pool if t.confirmed and not t.lost_frames)

    def update(self, boxes: np.ndarray, scores: np.ndarray, labels: Sequence[str]) -> List[Optional[int]]:
        cfg = self.config
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        keys = [str(label) if cfg.per_class else "" for label in labels]
        ids: List[Optional[int]] = [None] * len(boxes)
        first_frame = self._frames == 0
        self._frames += 1
        for key in set(keys) | set(self._pools):
            idx = np.array([i for i, k in enumerate(keys) if k == key], dtype=int)
            pool = self._pools.setdefault(key, [])
            for t in pool:
                t.predict()
            self._associate(pool, idx, boxes, scores, ids, first_frame)
            if not pool:
                del self._pools[key]
        return ids

    def _associate(self, pool, idx, boxes, scores, ids, first_frame) -> None:
        cfg = self.config
        high = idx[scores[idx] >= cfg.high_threshold] if len(idx) else idx
        low = idx[(scores[idx] >= cfg.low_threshold) & (scores[idx] < cfg.high_threshold)] if len(idx) else idx
        confirmed = [t for t in pool if t.confirmed]
        tentative = [t for t in pool if not t.confirmed]

        hit = set()  # tracks updated this frame
        # 1. high-score detections against every confirmed track, lost ones included
        pairs, rest_t, rest_high = _assign(confirmed, boxes[high], cfg.match_iou)
        for r, c in pairs:
            confirmed[r].update(boxes[high[c]])
            ids[high[c]] = confirmed[r].id
            hit.add(confirmed[r])
        # 2. low-score detections against the confirmed tracks still being followed
        following = [confirmed[i] for i in rest_t if not confirmed[i].lost_frames]
        pairs, _, _ = _assign(following, boxes[low], cfg.low_match_iou)
        for r, c in pairs:
            following[r].update(boxes[low[c]])
            ids[low[c]] = following[r].id
            hit.add(following[r])
        # 3. tentative tracks against the high-score detections left: a second sighting confirms
        left = high[rest_high]
        pairs, _, rest_left = _assign(tentative, boxes[left], cfg.match_iou)
        for r, c in pairs:
            t = tentative[r]
            t.update(boxes[left[c]])
            t.confirmed, t.id = True, self._new_id()
            ids[left[c]] = t.id
            hit.add(t)
        # 4. unmatched confirmed tracks are lost for a frame (dropped after the buffer); a
        #    tentative track not seen again is dropped
        survivors = []
        for t in pool:
            if t in hit:
                survivors.append(t)
            elif t.confirmed:
                t.lost_frames += 1
                if t.lost_frames <= cfg.track_buffer:
                    survivors.append(t)
        # 5. new tracks from confident detections nobody claimed
        for c in rest_left:
            j = left[c]
            if scores[j] < cfg.new_track_threshold:
                continue
            t = _Track(boxes[j], confirmed=first_frame)
            if first_frame:
                t.id = self._new_id()
                ids[j] = t.id
            survivors.append(t)
        pool[:] = survivors

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1
