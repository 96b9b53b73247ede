"""Two-stream pipelining: frame t+1's backbone overlaps frame t's decoder; the host's work between
frames overlaps the next frame's encoder.

``submit(frame t+1)`` queues, in this order: the frame's upload on a copy stream (through
page-locked memory, so the DMA waits behind nothing); its preprocessing and backbone on the
backbone stream, into one of two buffer slots, behind frame t's encoder (queued by the previous
``submit``); frame t's decoder on the enc-dec stream. The host then waits for frame t's result
only, post-processes it, queues frame t+1's encoder (behind its backbone) and returns frame t's
result. A frame's metadata travels with its buffers.

Why this order (measured on the H100, docs/benchmarks.md, "Pipelining"): the backbone and the
encoder both fill the GPU, and when they shared it the enc-dec's ~1,000 dependent kernels each
waited for SMs behind the backbone's GEMMs, so frame t's result came last, with the GPU idle while
the host post-processed it and queued the next frame (about 1.3 ms per frame). The decoder is
hundreds of small kernels that leave most SMs idle: it overlaps the backbone almost for free and
its result is ready while the backbone still runs. Queuing frame t+1's encoder before returning
frame t's result keeps the GPU busy while the host post-processes, returns, and receives and
uploads the next frame — with a short backbone (students, pruned ViT-H) the backbone alone does not
cover that. The enc-dec stream has the higher priority, so the decoder's kernels get SMs first.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Generator, List, Optional, Tuple

import torch

from dart_ros.preprocess import as_hwc_tensor, upload
from dart_ros.runtime.encdec import finish_steps
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
    steps: Optional[Generator] = None  # the enc-dec, once its encoder is queued
    ev_encoder: Optional[Tuple[torch.cuda.Event, torch.cuda.Event]] = None  # its start and end
    raw: Any = None  # the enc-dec's outputs, once its decoder is queued
    ev_decoder: Optional[Tuple[torch.cuda.Event, torch.cuda.Event]] = None


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
        prev = self._pending
        new = self._backbone(frame, color, vocab, meta, t0)  # behind prev's encoder
        self._pending, self._slot = new, self._slot ^ 1  # whatever happens to prev, this frame is not lost
        try:
            out = [self._finish(prev)] if prev is not None else []
        finally:
            try:
                self._start_encoder(new)
            except Exception:  # raised again, for this frame, when it is finished
                new.steps = None
        return out

    def flush(self) -> List[Detections]:
        if self._pending is None:
            return []
        pending, self._pending = self._pending, None
        return [self._finish(pending)]

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
        """Queue preprocessing and backbone of a frame on the backbone stream, behind everything
        the enc-dec stream has queued (the previous frame's encoder)."""
        det, slot = self.det, self._slot
        self.bb_stream.wait_stream(self.ed_stream)
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

    def _start_encoder(self, f: _InFlight) -> None:
        """Queue the frame's encoder (all of its enc-dec but the last decoder) behind its backbone."""
        with torch.cuda.stream(self.ed_stream):
            self.ed_stream.wait_event(f.ev_backbone)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            steps = self.det.encode_decode_steps(f.features, f.vocab)
            next(steps)
            end.record()
            f.steps, f.ev_encoder = steps, (start, end)

    def settle(self) -> None:
        """Make work from outside the pipeline safe (:meth:`Detector.detect` between ``submit`` calls):
        queue the frame in flight's decoder now — the graphs keep its encoder's state, which another
        replay of the same bucket would overwrite — and order the caller's stream behind the
        pipeline's streams (the backbone slots). The frame's result stays in flight."""
        f = self._pending
        if f is not None and f.raw is None:
            try:
                self._queue_decoder(f)
            except Exception:  # raised again, for this frame, when it is finished
                pass
        current = torch.cuda.current_stream(self.det.device)
        current.wait_stream(self.bb_stream)
        current.wait_stream(self.ed_stream)

    def _queue_decoder(self, f: _InFlight) -> None:
        """Queue the rest of the frame's enc-dec (its last decoder) and keep the raw outputs."""
        if f.raw is not None:
            return
        if f.steps is None:  # its encoder could not be queued: try once more, here
            self._start_encoder(f)
        with torch.cuda.stream(self.ed_stream):
            dec0, dec1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            dec0.record()
            try:
                f.raw = finish_steps(f.steps)
            except Exception:
                f.steps = None  # spent: a retry queues the whole enc-dec again
                raise
            dec1.record()
        f.ev_decoder = (dec0, dec1)
        self._slot_free[f.slot] = dec1

    def _finish(self, f: _InFlight) -> Detections:
        self._queue_decoder(f)
        with torch.cuda.stream(self.ed_stream):
            result = self.det._finish(f.raw, f.info, f.vocab)  # the host waits here, for this frame only
        (enc0, enc1), (dec0, dec1) = f.ev_encoder, f.ev_decoder
        dec1.synchronize()  # already passed; elapsed_time needs it recorded
        result.meta = f.meta
        result.timings_ms = {
            "backbone": f.ev_start.elapsed_time(f.ev_backbone),
            # the encoder and the decoder are queued in different calls: the time between is not theirs
            "encdec": enc0.elapsed_time(enc1) + dec0.elapsed_time(dec1),
            "total": (time.perf_counter() - f.t_submit) * 1e3,
        }
        return result
