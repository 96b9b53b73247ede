"""Two-stream pipelining: frame t+1's backbone overlaps frame t's decoder.

``submit(frame t+1)`` queues, in this order: the frame's upload on a copy stream (through
page-locked memory, so the DMA waits behind nothing); frame t's encoder on the enc-dec stream
(after frame t's backbone event); then frame t+1's preprocessing and backbone on the backbone
stream, into one of two buffer slots, after an event recorded behind frame t's encoder; then
frame t's decoder. The host waits for frame t's result only, and returns it. A frame's metadata
travels with its buffers.

Why the backbone starts after the encoder and not earlier (measured on the H100, docs/benchmarks.md,
"Pipelining"): the backbone and the encoder both fill the GPU, and when they shared it the
enc-dec's ~1,000 dependent kernels each waited for SMs behind the backbone's GEMMs, so frame t's
result came last, with the GPU idle while the host post-processed it and queued the next frame
(about 1.3 ms per frame). The decoder is hundreds of small kernels that leave most SMs idle: it
overlaps the backbone almost for free, its result is ready while the backbone still runs, and the
host's work between frames is hidden. The enc-dec stream has the higher priority, so the
decoder's kernels get SMs first.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, List, Optional

import torch

from dart_ros.preprocess import as_hwc_tensor, upload
from dart_ros.types import Detections

# Lower is more urgent; torch clamps to what the device supports.
ENCDEC_PRIORITY = -1


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

    def __init__(self, detector, encdec_priority: int = ENCDEC_PRIORITY):
        self.det = detector
        dev = detector.device
        self.upload_stream = torch.cuda.Stream(device=dev)
        self.bb_stream = torch.cuda.Stream(device=dev)
        self.ed_stream = torch.cuda.Stream(device=dev, priority=encdec_priority)
        self._slot = 0
        self._pending: Optional[_InFlight] = None
        # Slot s may be overwritten only after the enc-dec that read it has finished.
        self._slot_free: List[Optional[torch.cuda.Event]] = [None, None]

    def submit(self, image, color: str, meta: Any) -> List[Detections]:
        det = self.det
        vocab = det._require_vocab()
        hwc = as_hwc_tensor(image, color)  # a malformed frame raises before anything is queued
        t0 = time.perf_counter()
        frame = self._upload(hwc)
        prev, new = self._pending, []

        def start_backbone() -> None:
            if not new:
                new.append(self._backbone(frame, color, vocab, meta, t0))

        try:
            out = [self._finish(prev, start_backbone)] if prev is not None else []
        finally:
            try:
                start_backbone()  # first frame, or the enc-dec failed: the new frame is not lost
            finally:
                self._pending = new[0] if new else None
                self._slot ^= bool(new)
        return out

    def flush(self) -> List[Detections]:
        if self._pending is None:
            return []
        out = [self._finish(self._pending)]
        self._pending = None
        return out

    def _upload(self, hwc: torch.Tensor) -> torch.Tensor:
        dev = self.det.device
        if hwc.device.type == "cpu":
            with torch.cuda.stream(self.upload_stream):
                frame = upload(hwc, dev)
            self.bb_stream.wait_stream(self.upload_stream)
            frame.record_stream(self.bb_stream)  # allocated on the copy stream, read on this one
            return frame
        self.bb_stream.wait_stream(torch.cuda.current_stream(dev))  # produced on the caller's stream
        return hwc

    def _backbone(self, frame: torch.Tensor, color: str, vocab, meta, t0: float) -> _InFlight:
        """Queue preprocessing and backbone of a frame on the backbone stream (behind whatever the
        current stream has queued: the previous frame's encoder)."""
        det, slot = self.det, self._slot
        self.bb_stream.wait_stream(torch.cuda.current_stream(det.device))
        with torch.cuda.stream(self.bb_stream):
            if self._slot_free[slot] is not None:
                self.bb_stream.wait_event(self._slot_free[slot])
            ev_start = torch.cuda.Event(enable_timing=True)
            ev_bb = torch.cuda.Event(enable_timing=True)
            ev_start.record()
            pixels, info = det.preprocess(frame, color)
            feats = det._backbone(pixels, slot)
            ev_bb.record()
        return _InFlight(slot, feats, info, vocab, meta, t0, ev_start, ev_bb)

    def _finish(self, f: _InFlight, after_encoder=None) -> Detections:
        det = self.det
        with torch.cuda.stream(self.ed_stream):
            self.ed_stream.wait_event(f.ev_backbone)
            ev_ed0 = torch.cuda.Event(enable_timing=True)
            ev_ed1 = torch.cuda.Event(enable_timing=True)
            ev_ed0.record()
            raw = det.encode_decode(f.features, f.vocab, after_encoder=after_encoder)
            ev_ed1.record()
            self._slot_free[f.slot] = ev_ed1
            result = det._finish(raw, f.info, f.vocab)  # the host waits here, for this frame only
        ev_ed1.synchronize()  # already passed; elapsed_time needs it recorded
        result.meta = f.meta
        result.timings_ms = {
            "backbone": f.ev_start.elapsed_time(f.ev_backbone),
            "encdec": ev_ed0.elapsed_time(ev_ed1),
            "total": (time.perf_counter() - f.t_submit) * 1e3,
        }
        return result
