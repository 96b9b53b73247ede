"""The runner interface: one runner per stage, interchangeable backends behind it.

A frame passes two stages. The **backbone runner** turns normalised pixels into detection
features; the **encoder-decoder runner** turns one image's features and a prepared prompt (every
class of a vocabulary) into raw per-class outputs, in two explicit steps so that a caller can queue
other work between them (the two-stream pipeline queues the next frame's backbone there). Prompt
preparation runs once per vocabulary and gives a runner-specific typed object.

The :class:`~dart_ros.detector.Detector` and :class:`~dart_ros.runtime.pipeline.StreamPipeline`
use nothing but this interface; backends register a builder under a name
(:mod:`dart_ros.runtime.registry`) and ``DetectorConfig.runtime`` picks one.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable, List, Optional, Protocol, Sequence

import torch

from dart_ros.model.encdec import EncDecOutput


class PreparedPrompt(Protocol):
    """A vocabulary in a runner's own form (text features, cached projections …); class axis first."""

    def __len__(self) -> int: ...


@dataclasses.dataclass
class EncoderState:
    """What :meth:`EncDecRunner.encode` queued: the outputs of finished class chunks and the step
    that queues the rest (the last chunk's decoder), run by :meth:`EncDecRunner.decode`."""

    done: List[EncDecOutput]
    pending: Optional[Callable[[], EncDecOutput]] = None

    def finish(self) -> EncDecOutput:
        """Queue the pending step (once) and return the outputs of every class."""
        if self.pending is not None:
            step, self.pending = self.pending, None  # spent even if it raises: encode again then
            self.done.append(step())
        return self.done[0] if len(self.done) == 1 else EncDecOutput.cat(self.done)


class BackboneRunner(abc.ABC):
    """Pixels -> features. ``run`` writes into one of ``slots`` buffers; a slot's features stay valid
    until that slot is run again (the pipeline alternates slots so that one frame's features are
    read while the next frame's are written)."""

    slots: int = 2

    @abc.abstractmethod
    def run(self, pixels: torch.Tensor, slot: int = 0) -> torch.Tensor:
        """(1, 3, S, S) normalised pixels -> (1, C, P, P) features in buffer ``slot``."""

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, C, P, P) features in fresh tensors."""
        return torch.cat([self.run(p[None], 0).clone() for p in pixels])

    @abc.abstractmethod
    def warm_up(self, batch_sizes: Sequence[int] = ()) -> torch.Tensor:
        """Make every slot ready (graph capture, compiles, autotuning), and :meth:`features` for each
        of ``batch_sizes`` (several cameras); returns slot 0's features of a blank image, for the
        encoder-decoder's warm-up."""

    def close(self) -> None:
        """Release device buffers; the runner is unusable afterwards."""
        return None


class EncDecRunner(abc.ABC):
    """Features + prepared prompt -> raw per-class outputs (logits, boxes, presence).

    One encode may be in flight: call :meth:`decode` on its state before the next :meth:`encode`.
    Work is queued on the caller's current CUDA stream and never waits for the host.
    """

    @abc.abstractmethod
    def prepare(self, text: torch.Tensor, mask: torch.Tensor) -> PreparedPrompt:
        """Text features (T, N, C) seq-first and padding mask (N, T) -> this runner's prompt."""

    @abc.abstractmethod
    def encode(self, features: torch.Tensor, prompt: PreparedPrompt, geometry_token: bool) -> EncoderState:
        """Queue the encoder (and every chunk but the last one's decoder) for (1, C, P, P) features.

        ``geometry_token``: append the image-conditioned geometry token to each prompt (SAM3's
        processor does; ``prompt_mode: official``)."""

    def decode(self, state: EncoderState) -> EncDecOutput:
        """Queue the rest of an :meth:`encode` and return the outputs of every class."""
        return state.finish()

    def __call__(self, features: torch.Tensor, prompt: PreparedPrompt, geometry_token: bool) -> EncDecOutput:
        return self.decode(self.encode(features, prompt, geometry_token))

    @abc.abstractmethod
    def set_chunk_size(self, classes: int) -> None:
        """Most classes per encoder-decoder batch (memory grows with it)."""

    def warm_up(self, features: torch.Tensor, geometry_token: bool) -> None:
        """Capture and compile every class-count variant before the first frame needs it."""
        return None

    def close(self) -> None:
        """Release device buffers; the runner is unusable afterwards."""
        return None


@dataclasses.dataclass
class Runners:
    """The runners of one Detector, as a backend's builder returns them."""

    name: str
    backbone: BackboneRunner
    encdec: EncDecRunner

    def close(self) -> None:
        self.backbone.close()
        self.encdec.close()
