"""Two-stream pipelining: frame t+1's backbone overlaps frame t's encoder-decoder.

Each submitted frame's preprocessing and backbone are enqueued on the backbone stream into one of
two buffer slots; the previous frame's encoder-decoder then runs on the second stream after waiting
on that frame's backbone event, and its result is returned. Only events order the streams; the one
host wait per frame is for the result the caller needs. A frame's metadata travels with its buffers.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, List, Optional

import torch

from dart_ros.types import Detections


@dataclasses.dataclass
class _InFlight:
    slot: int
    features: torch.Tensor
    info: Any
    vocab: Any
    meta: Any
    t_submit: float
    ev_start: torch.cuda.Event
    ev_backbone: torch.cuda.Event


class StreamPipeline:
    """Streaming front of a CUDA Detector (see :meth:`dart_ros.detector.Detector.submit`)."""

    def __init__(self, detector):
        self.det = detector
        self.bb_stream = torch.cuda.Stream(device=detector.device)
        self.ed_stream = torch.cuda.Stream(device=detector.device)
        self._slot = 0
        self._pending: Optional[_InFlight] = None
        # Slot s may be overwritten only after the enc-dec that read it has finished.
        self._slot_free: List[Optional[torch.cuda.Event]] = [None, None]

    def submit(self, image, color: str, meta: Any) -> List[Detections]:
        det = self.det
        vocab = det._require_vocab()
        slot = self._slot
        t0 = time.perf_counter()
        with torch.cuda.stream(self.bb_stream):
            if self._slot_free[slot] is not None:
                self.bb_stream.wait_event(self._slot_free[slot])
            ev_start = torch.cuda.Event(enable_timing=True)
            ev_bb = torch.cuda.Event(enable_timing=True)
            ev_start.record()
            pixels, info = det.preprocess(image, color)
            feats = det._backbone(pixels, slot)
            ev_bb.record()
        new = _InFlight(slot, feats, info, vocab, meta, t0, ev_start, ev_bb)
        out = [self._finish(self._pending)] if self._pending is not None else []
        self._pending = new
        self._slot ^= 1
        return out

    def flush(self) -> List[Detections]:
        if self._pending is None:
            return []
        out = [self._finish(self._pending)]
        self._pending = None
        return out

    def _finish(self, f: _InFlight) -> Detections:
        det = self.det
        with torch.cuda.stream(self.ed_stream):
            self.ed_stream.wait_event(f.ev_backbone)
            ev_ed0 = torch.cuda.Event(enable_timing=True)
            ev_ed1 = torch.cuda.Event(enable_timing=True)
            ev_ed0.record()
            raw = det.encode_decode(f.features, f.vocab)
            ev_ed1.record()
            done = torch.cuda.Event()
            done.record()
            self._slot_free[f.slot] = done
            result = det._finish(raw, f.info, f.vocab)  # the host waits here, for this frame only
        ev_ed1.synchronize()
        result.meta = f.meta
        result.timings_ms = {
            "backbone": f.ev_start.elapsed_time(f.ev_backbone),
            "encdec": ev_ed0.elapsed_time(ev_ed1),
            "total": (time.perf_counter() - f.t_submit) * 1e3,
        }
        return result
