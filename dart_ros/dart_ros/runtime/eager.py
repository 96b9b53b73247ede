"""The eager runtime: sam3's own modules as they are, on any device (autocast for reduced precision).

It is the reference the fast runtime is tested against, and what runs on CPUs.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Optional, Sequence

import torch

from dart_ros.model import encdec
from dart_ros.model.registry import DartModel
from dart_ros.runtime.interface import BackboneRunner, EncDecRunner, EncoderState


@dataclasses.dataclass(frozen=True)
class TextPrompt:
    """The eager runner's prepared prompt: the text features as they are."""

    text: torch.Tensor  # (T, N, C) seq-first
    mask: torch.Tensor  # (N, T) bool, True = padding

    def __len__(self) -> int:
        return self.mask.shape[0]


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


class EagerBackbone(BackboneRunner):
    """``DartModel.forward_features``; every call returns fresh tensors, so slots cost nothing."""

    def __init__(self, model: DartModel, device: torch.device, autocast_dtype: Optional[torch.dtype]):
        self.model = model
        self.device = device
        self.autocast_dtype = autocast_dtype

    def run(self, pixels: torch.Tensor, slot: int = 0) -> torch.Tensor:
        return self.features(pixels)

    @torch.inference_mode()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        with _autocast(self.device, self.autocast_dtype):
            return self.model.forward_features(pixels)

    def warm_up(self, batch_sizes: Sequence[int] = ()) -> torch.Tensor:
        # Nothing to capture or compile: features of the right shape for the enc-dec's warm-up.
        p = self.model.feature_size
        return torch.zeros(1, self.model.arch.d_model, p, p, device=self.device)


class EagerEncDec(EncDecRunner):
    """:func:`dart_ros.model.encdec.encode_decode` over class chunks; everything runs in ``encode``."""

    def __init__(self, model: DartModel, device: torch.device, autocast_dtype: Optional[torch.dtype], chunk: int):
        self.model = model
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.chunk = chunk
        self.pos = model.position_encoding(device)

    def prepare(self, text: torch.Tensor, mask: torch.Tensor) -> TextPrompt:
        return TextPrompt(text, mask)

    def set_chunk_size(self, classes: int) -> None:
        self.chunk = classes

    @torch.inference_mode()
    def encode(self, features: torch.Tensor, prompt: TextPrompt, geometry_token: bool) -> EncoderState:
        p = self.model.feature_size
        sam3 = self.model.sam3
        with _autocast(self.device, self.autocast_dtype):
            img_feat = encdec.flatten_features(features)
            img_pos = self.pos.to(img_feat.dtype)
            text, mask = prompt.text, prompt.mask
            if geometry_token:
                geo, geo_mask = encdec.geometry_token(sam3, img_feat, img_pos, (p, p))
                n = text.shape[1]
                text = torch.cat([text.to(geo.dtype), geo.expand(-1, n, -1)], dim=0)
                mask = torch.cat([mask, geo_mask.expand(n, -1)], dim=1)
            parts = [
                encdec.encode_decode(
                    sam3, img_feat, img_pos, (p, p), text[:, s : s + self.chunk], mask[s : s + self.chunk]
                )
                for s in range(0, text.shape[1], self.chunk)
            ]
        return EncoderState(parts)


def build_eager(model: DartModel, config, device: torch.device, autocast_dtype: Optional[torch.dtype]):
    from dart_ros.runtime.interface import Runners

    return Runners(
        "eager",
        EagerBackbone(model, device, autocast_dtype),
        EagerEncDec(model, device, autocast_dtype, config.max_classes_per_chunk),
    )
