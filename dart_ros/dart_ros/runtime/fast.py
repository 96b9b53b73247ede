"""The fast runtime (CUDA): fused ViT or student backbone and fused encoder-decoder in the chosen
precision, each captured in CUDA graphs (the backbone per buffer slot, the encoder-decoder per
class-count bucket). docs/detector.md describes what each piece does.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from dart_ros.model import encdec
from dart_ros.model.registry import DartModel
from dart_ros.runtime.backbone import BackboneGraphs, prepare_backbone
from dart_ros.runtime.encdec import EncDecGraphs, skip_attention_weights
from dart_ros.runtime.fused_encdec import FusedEncDec, PromptCache
from dart_ros.runtime.interface import BackboneRunner, EncDecRunner, EncoderState, Runners

# Class-count buckets of the encoder-decoder graphs below the chunk size (which is the last).
BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def buckets_for(chunk: int) -> Tuple[int, ...]:
    return tuple(b for b in BUCKETS if b < chunk) + (chunk,)


class FastBackbone(BackboneRunner):
    """The backbone prepared by :func:`prepare_backbone`, replayed from one CUDA graph per slot."""

    def __init__(
        self,
        model: DartModel,
        device: torch.device,
        dtype: Optional[torch.dtype],
        compile_kernels: bool,
        tune_gemms: bool,
        cuda_graphs: bool,
        slots: int = 2,
    ):
        # One fixed input size: let cuDNN time its algorithms once (during the warm-up before graph
        # capture) instead of trusting its heuristics (the ViT's patch conv, a student's convs).
        torch.backends.cudnn.benchmark = True
        vision = prepare_backbone(model.vision, dtype, model.feature_size, compile_kernels, tune_gemms)
        self.module = vision  # the module replayed (FastViTDetection, FastStudentDetection or sam3's)
        self.slots = slots
        self.image_size = model.image_size
        self.device = device
        self.graphs = BackboneGraphs(
            vision, model.image_size, device, dtype or torch.float32, slots=slots, use_graphs=cuda_graphs
        )

    @torch.inference_mode()
    def run(self, pixels: torch.Tensor, slot: int = 0) -> torch.Tensor:
        return self.graphs.run(pixels, slot)

    @torch.inference_mode()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, C, P, P) in one pass (one graph per batch size), fresh tensors."""
        if pixels.shape[0] == 1:
            return self.run(pixels, 0).clone()
        return self.graphs.run_batch(pixels).clone()

    @property
    def captured(self) -> Tuple[bool, ...]:
        """Per slot: its graph is captured."""
        return tuple(g is not None for g in self.graphs.graphs)

    @torch.inference_mode()
    def warm_up(self, batch_sizes: Sequence[int] = ()) -> torch.Tensor:
        s = self.image_size
        for b in sorted(set(batch_sizes) - {1}):
            self.features(torch.zeros(b, 3, s, s, device=self.device))
        pixels = torch.zeros(1, 3, s, s, device=self.device)
        return [self.run(pixels, slot) for slot in range(self.slots)][0]

    def close(self) -> None:
        self.graphs = None


class FastEncDec(EncDecRunner):
    """:class:`FusedEncDec` with prompts prepared as :class:`PromptCache`, replayed from
    :class:`EncDecGraphs` (or launched eagerly, all classes at once, without ``cuda_graphs``)."""

    def __init__(
        self,
        model: DartModel,
        device: torch.device,
        dtype: Optional[torch.dtype],
        chunk: int,
        compile_stages: bool,
        cuda_graphs: bool,
    ):
        self.model = model
        self.cuda_graphs = cuda_graphs
        pos = model.position_encoding(device)
        skip_attention_weights(model.sam3.geometry_encoder)
        self.module = FusedEncDec(
            model.sam3, model.feature_size, pos, dtype or torch.float32, compile_stages=compile_stages
        )
        self._pos: Dict[torch.dtype, torch.Tensor] = {pos.dtype: pos}
        self.graphs: Optional[EncDecGraphs] = None
        self.set_chunk_size(chunk)

    def _pos_as(self, dtype: torch.dtype) -> torch.Tensor:
        """The position encoding in ``dtype``, cast once (not per frame)."""
        if dtype not in self._pos:
            self._pos[dtype] = next(iter(self._pos.values())).to(dtype)
        return self._pos[dtype]

    def set_chunk_size(self, classes: int) -> None:
        self.graphs = EncDecGraphs(self.module, buckets_for(classes)) if self.cuda_graphs else None

    @property
    def captured(self) -> Tuple[Tuple[int, int, bool], ...]:
        """(class bucket, prompt length, geometry token) of every captured graph set."""
        return self.graphs.captured if self.graphs is not None else ()

    @torch.inference_mode()
    def prepare(self, text: torch.Tensor, mask: torch.Tensor) -> PromptCache:
        return self.module.prompt_cache(text, mask)

    @torch.inference_mode()
    def encode(self, features: torch.Tensor, prompt: PromptCache, geometry_token: bool) -> EncoderState:
        img_feat = encdec.flatten_features(features)
        img_pos = self._pos_as(img_feat.dtype)
        if self.graphs is not None:
            return self.graphs.encode(img_feat, img_pos, prompt, geometry_token)
        state = self.module.encode(img_feat, img_pos, prompt, geometry_token)
        return EncoderState([], lambda: encdec.EncDecOutput(*self.module.decode(*state)))

    @torch.inference_mode()
    def warm_up(self, features: torch.Tensor, geometry_token: bool) -> None:
        arch = self.model.arch
        # Any prompt of the right length captures the same graphs; the values do not matter.
        text = torch.zeros(arch.context_length, 1, arch.d_model, device=features.device)
        mask = torch.zeros(1, arch.context_length, dtype=torch.bool, device=features.device)
        one = self.prepare(text, mask)
        for b in self.graphs.buckets if self.graphs is not None else (1,):
            self(features, one.empty_like(b), geometry_token)

    def close(self) -> None:
        self.graphs = None
        self.module = None


def build_fast(model: DartModel, config, device: torch.device, dtype: Optional[torch.dtype]) -> Runners:
    # The enc-dec first: it reads the position encoding from the backbone, which prepare_backbone casts.
    encdec_runner = FastEncDec(
        model, device, dtype, config.max_classes_per_chunk, config.compile_encdec, config.cuda_graphs
    )
    backbone = FastBackbone(model, device, dtype, config.compile_kernels, config.tune_gemms, config.cuda_graphs)
    return Runners("fast", backbone, encdec_runner)
