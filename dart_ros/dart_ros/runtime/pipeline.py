"""Two-stream pipelining over the runner interface: frame t+1's backbone overlaps frame t's
decoder; the host's work between frames overlaps the next frame's encoder.

``submit(frame t+1)`` queues, in this order: the frame's upload on a copy stream (through
page-locked memory, so the DMA waits behind nothing); its preprocessing and backbone on the
backbone stream, into one of two buffer slots, behind frame t's encoder (queued by the previous
``submit``); frame t's decoder on the enc-dec stream. The host then waits for frame t's result
only, post-processes it, queues frame t+1's encoder (behind its backbone) and returns frame t's
result. A frame's metadata travels with its buffers.

Why this order: the backbone and the encoder both fill the GPU; when they share it, the enc-dec's
many dependent kernels each wait for SMs behind the backbone's GEMMs, frame t's result comes last,
and the GPU idles while the host post-processes it and queues the next frame. The decoder is
hundreds of small kernels that leave most SMs idle: it overlaps the backbone almost for free and
its result is ready while the backbone still runs. Queuing frame t+1's encoder before returning
frame t's result keeps the GPU busy while the host post-processes, returns, and receives and
uploads the next frame — with a short backbone (students, pruned ViT-H) the backbone alone does not
cover that. The enc-dec stream has the higher priority, so the decoder's kernels get SMs first.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, List, Optional, Tuple

import torch

from dart_ros.model.encdec import EncDecOutput
from dart_ros.preprocess import ResizeInfo, as_hwc_tensor, upload
from dart_ros.runtime.interface import BackboneRunner, EncDecRunner, EncoderState, PreparedPrompt
from dart_ros.types import Detections

# Lower is more urgent; torch clamps to what the device supports.
ENCDEC_PRIORITY = -1

Preprocess = Callable[[torch.Tensor, str], Tuple[torch.Tensor, ResizeInfo]]
Postprocess = Callable[[EncDecOutput, ResizeInfo, Any], Detections]


@dataclasses.dataclass
class _InFlight:
    slot: int
    features: torch.Tensor
    info: ResizeInfo
    vocab: Any  # handed back to the postprocess step (the class names the frame ran with)
    prompt: PreparedPrompt
    geometry_token: bool
    meta: Any
    t_submit: float
    ev_start: torch.cuda.Event
    ev_backbone: torch.cuda.Event
    state: Optional[EncoderState] = None  # the enc-dec, once its encoder is queued
    ev_encoder: Optional[Tuple[torch.cuda.Event, torch.cuda.Event]] = None  # its start and end
    raw: Optional[EncDecOutput] = None  # the enc-dec's outputs, once its decoder is queued
    ev_decoder: Optional[Tuple[torch.cuda.Event, torch.cuda.Event]] = None


def _events() -> Tuple[torch.cuda.Event, torch.cuda.Event]:
    return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


class StreamPipeline:
    """Frames through a backbone runner and an encoder-decoder runner on two CUDA streams.

    Args:
        backbone, encdec: the stage runners (the backbone with at least two slots).
        preprocess: (uploaded HWC frame, colour layout) -> (pixels, resize info), queued on the
            backbone stream.
        postprocess: (raw outputs, resize info, vocabulary) -> Detections; the host waits for the
            frame's outputs in it.
        device: the CUDA device.
    """

    def __init__(
        self,
        backbone: BackboneRunner,
        encdec: EncDecRunner,
        preprocess: Preprocess,
        postprocess: Postprocess,
        device: torch.device,
    ):
        if backbone.slots < 2:
            raise ValueError("the pipeline needs a backbone runner with two buffer slots")
        self.backbone = backbone
        self.encdec = encdec
        self.preprocess = preprocess
        self.postprocess = postprocess
        self.device = device
        self.upload_stream = torch.cuda.Stream(device=device)
        self.bb_stream = torch.cuda.Stream(device=device)
        self.ed_stream = torch.cuda.Stream(device=device, priority=ENCDEC_PRIORITY)
        self._slot = 0
        self._pending: Optional[_InFlight] = None
        # Slot s may be overwritten only after the enc-dec that read it has finished.
        self._slot_free: List[Optional[torch.cuda.Event]] = [None, None]

    def submit(
        self, image, color: str, meta: Any, vocab: Any, prompt: PreparedPrompt, geometry_token: bool
    ) -> List[Detections]:
        """Queue a frame; return the previous frame's result (if any)."""
        hwc = as_hwc_tensor(image, color)  # a malformed frame raises before anything is queued
        t0 = time.perf_counter()
        frame = self._upload(hwc)
        prev = self._pending
        slot = self._slot
        feats, info, ev_start, ev_bb = self._backbone(frame, color, slot)  # behind prev's encoder
        new = _InFlight(slot, feats, info, vocab, prompt, geometry_token, meta, t0, ev_start, ev_bb)
        self._pending, self._slot = new, self._slot ^ 1  # whatever happens to prev, this frame is not lost
        try:
            out = [self._finish(prev)] if prev is not None else []
        finally:
            try:
                self._start_encoder(new)
            except Exception:  # raised again, for this frame, when it is finished
                new.state = None
        return out

    def flush(self) -> List[Detections]:
        if self._pending is None:
            return []
        pending, self._pending = self._pending, None
        return [self._finish(pending)]

    def _upload(self, hwc: torch.Tensor) -> torch.Tensor:
        if hwc.device.type == "cpu":
            with torch.cuda.stream(self.upload_stream):
                frame = upload(hwc, self.device)
            self.bb_stream.wait_stream(self.upload_stream)
            frame.record_stream(self.bb_stream)  # allocated on the copy stream, read on this one
            return frame
        self.bb_stream.wait_stream(torch.cuda.current_stream(self.device))  # produced on the caller's stream
        return hwc

    def _backbone(self, frame: torch.Tensor, color: str, slot: int):
        """Queue preprocessing and backbone of a frame on the backbone stream, behind everything
        the enc-dec stream has queued (the previous frame's encoder); returns the features (in
        buffer ``slot``), the resize info and the stage's start and end events."""
        self.bb_stream.wait_stream(self.ed_stream)
        with torch.cuda.stream(self.bb_stream):
            if self._slot_free[slot] is not None:
                self.bb_stream.wait_event(self._slot_free[slot])
            ev_start, ev_bb = _events()
            ev_start.record()
            pixels, info = self.preprocess(frame, color)
            feats = self.backbone.run(pixels, slot)
            ev_bb.record()
        return feats, info, ev_start, ev_bb

    def _start_encoder(self, f: _InFlight) -> None:
        """Queue the frame's encoder (all of its enc-dec but the last decoder) behind its backbone."""
        with torch.cuda.stream(self.ed_stream):
            self.ed_stream.wait_event(f.ev_backbone)
            start, end = _events()
            start.record()
            state = self.encdec.encode(f.features, f.prompt, f.geometry_token)
            end.record()
            f.state, f.ev_encoder = state, (start, end)

    def settle(self) -> None:
        """Make work from outside the pipeline safe (a direct Detector call between ``submit`` calls):
        queue the frame in flight's decoder now — the runner keeps its encoder's state, which
        another encode would have to decode first — and order the caller's stream behind the
        pipeline's streams (the backbone slots). The frame's result stays in flight."""
        f = self._pending
        if f is not None and f.raw is None:
            try:
                self._queue_decoder(f)
            except Exception:  # raised again, for this frame, when it is finished
                pass
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.bb_stream)
        current.wait_stream(self.ed_stream)

    def _queue_decoder(self, f: _InFlight) -> None:
        """Queue the rest of the frame's enc-dec (its last decoder) and keep the raw outputs."""
        if f.raw is not None:
            return
        if f.state is None:  # its encoder could not be queued: try once more, here
            self._start_encoder(f)
        with torch.cuda.stream(self.ed_stream):
            dec0, dec1 = _events()
            dec0.record()
            try:
                f.raw = self.encdec.decode(f.state)
            except Exception:
                f.state = None  # spent: a retry queues the whole enc-dec again
                raise
            dec1.record()
        f.ev_decoder = (dec0, dec1)
        self._slot_free[f.slot] = dec1

    def _finish(self, f: _InFlight) -> Detections:
        self._queue_decoder(f)
        with torch.cuda.stream(self.ed_stream):
            result = self.postprocess(f.raw, f.info, f.vocab)  # the host waits here, for this frame only
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
