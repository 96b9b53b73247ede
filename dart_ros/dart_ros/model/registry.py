"""Backbone presets (the ``backbone:=`` launch values) and the model factory.

A preset names the encoder-decoder architecture and the vision backbone. The registry is a plain
dict; adding a preset is one entry. ``tiny*`` presets are ordinary presets used by the tests, so the
test path is the production path.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from dart_ros.model import checkpoint as ckpt_io
from dart_ros.model.arch import Sam3Arch, get_arch
from dart_ros.model.build import build_sam3_image
from dart_ros.model.encdec import flatten_features
from dart_ros.model.student import STUDENTS, StudentBackbone
from dart_ros.model.vit import (
    MaskSpec,
    build_vit_neck,
    format_mask_blocks,
    parse_mask_blocks,
    removed_block_keys,
)
from dart_ros.presets import BackbonePreset, get_preset

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _seeded_on(device: str, seed: int):
    """Build modules on ``device`` with reproducible random weights, leaving the global RNG as it was."""
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), dev:
        torch.manual_seed(seed)
        yield


class DartModel(nn.Module):
    """A SAM3 image model (``sam3`` classes) plus what the Detector needs to know about it.

    Attributes:
        sam3: ``sam3.model.sam3_image.Sam3Image`` with a detection-only vision backbone.
        preset, arch, image_size, feature_size: what was built.
        text_identity: identity of the text encoder weights (keys the text-feature caches).
        weights_identity: identity of all weights (for reports and engine manifests).
        has_text_encoder: False when built without it (vocabulary from a text cache only).
    """

    def __init__(
        self,
        sam3: nn.Module,
        preset: BackbonePreset,
        arch: Sam3Arch,
        image_size: int,
        text_identity: str,
        weights_identity: str,
        has_text_encoder: bool,
    ):
        super().__init__()
        self.sam3 = sam3
        self.preset = preset
        self.arch = arch
        self.image_size = image_size
        self.feature_size = arch.feature_size(image_size)
        self.text_identity = text_identity
        self.weights_identity = weights_identity
        self.has_text_encoder = has_text_encoder

    @property
    def vision(self) -> nn.Module:
        return self.sam3.backbone.vision_backbone

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, d_model, P, P) detection features."""
        return self.vision.forward_detection(pixels)

    @torch.inference_mode()
    def position_encoding(self, device: Optional[torch.device] = None) -> torch.Tensor:
        """(P², 1, C) seq-first position encoding of the image tokens, the encoder's second input
        (constant for the input size)."""
        device = device if device is not None else next(self.parameters()).device
        p = self.feature_size
        probe = torch.zeros(1, self.arch.d_model, p, p, device=device)
        return flatten_features(self.vision.position_encoding(probe))

    @torch.inference_mode()
    def encode_text(self, names, device: Optional[torch.device] = None):
        """SAM3's text encoder on class names: ((T, N, C) seq-first features, (N, T) bool mask, True
        = padding), the enc-dec's text inputs."""
        device = device if device is not None else next(self.parameters()).device
        out = self.sam3.backbone.forward_text(list(names), device=device)
        return out["language_features"], out["language_mask"]


def build_model(
    backbone: str = "vit_h",
    image_size: Optional[int] = None,
    sam3_checkpoint: Optional[str] = None,
    backbone_checkpoint: Optional[str] = None,
    timm_weights: Optional[str] = None,
    skip_blocks: Optional[Sequence[int]] = None,
    mask_blocks: Optional[str] = None,
    load_text_encoder: bool = True,
    seed: int = 0,
    device: str = "cpu",
) -> DartModel:
    """Build a preset on the CPU, with real weights where paths are given, random otherwise.

    Args:
        backbone: a key of :data:`PRESETS`.
        image_size: square input side S (multiple of 14); the architecture's default when None.
        sam3_checkpoint: ``sam3.pt`` (text encoder, encoder-decoder and, for ViT presets, vision).
        backbone_checkpoint: DART student or pruned checkpoint for the vision backbone.
        timm_weights: local file of ImageNet weights for a student's timm network.
        skip_blocks / mask_blocks: pruning for ViT presets (overrides the preset; a pruned
            checkpoint's own lists win and must agree with an explicit request).
        load_text_encoder: False to build without the text encoder (text cache deployments).
        seed: random-weight seed for everything no checkpoint provides.
        device: where to build. Random initialisation of ViT-H takes ~15 s on a CPU and well under a
            second on a GPU; the random values differ between devices (different generators).
    """
    preset = get_preset(backbone)
    arch = get_arch(preset.arch)
    size = image_size or arch.default_image_size
    arch.feature_size(size)

    with _seeded_on(device, seed):
        vision, removed = _build_vision(preset, arch, size, backbone_checkpoint, timm_weights, skip_blocks, mask_blocks)
        scalp = 0 if preset.kind == "student" else 1

        text = None
        if not load_text_encoder:
            text = _NoTextEncoder()
        sam3 = build_sam3_image(arch, vision, text_encoder=text, scalp=scalp)

    if sam3_checkpoint:
        # Checkpoints are read to the CPU and copied into the (possibly GPU) parameters.
        ckpt_io.load_sam3_checkpoint(
            sam3,
            sam3_checkpoint,
            load_vision=preset.kind == "vit" and not backbone_checkpoint,
            load_text=load_text_encoder,
            vision_removed_prefixes=removed,
        )
        text_id = f"{arch.name}:sam3:{ckpt_io.file_fingerprint(sam3_checkpoint)}"
    else:
        text_id = f"{arch.name}:random:{seed}"
        log.warning("no SAM3 checkpoint given: %s runs with RANDOM weights (seed %d)", backbone, seed)
    parts = [text_id, preset.name, str(size), format_mask_blocks(parse_mask_blocks(mask_blocks))]
    if backbone_checkpoint:
        parts.append(ckpt_io.file_fingerprint(backbone_checkpoint))
    return DartModel(sam3.eval(), preset, arch, size, text_id, "|".join(parts), load_text_encoder)


def _build_vision(
    preset: BackbonePreset, arch: Sam3Arch, size: int, backbone_checkpoint, timm_weights, skip_blocks, mask_blocks
) -> Tuple[nn.Module, Tuple[str, ...]]:
    """The vision backbone of a preset with its own checkpoint loaded; also the state-dict key
    prefixes that pruning removed (present in sam3.pt, absent from the model)."""
    if preset.kind == "student":
        if skip_blocks or mask_blocks:
            raise ValueError("skip_blocks/mask_blocks apply to ViT backbones, not students")
        vision = StudentBackbone(STUDENTS[preset.student].timm_name, arch, size, timm_weights)
        if backbone_checkpoint:
            ckpt_io.load_student_checkpoint(vision, backbone_checkpoint)
        return vision, ()
    skips = tuple(preset.skip_blocks if skip_blocks is None else skip_blocks)
    masks: MaskSpec = parse_mask_blocks(mask_blocks)
    pruned = None
    if backbone_checkpoint:
        pruned, file_skips, file_masks = ckpt_io.read_pruned_header(backbone_checkpoint)
        if skip_blocks is not None and sorted(skip_blocks) != file_skips:
            raise ckpt_io.CheckpointError(
                f"{backbone_checkpoint!r} was pruned with skip_blocks {file_skips}, "
                f"but {sorted(skip_blocks)} was requested"
            )
        if mask_blocks and parse_mask_blocks(file_masks) != masks:
            raise ckpt_io.CheckpointError(
                f"{backbone_checkpoint!r} was pruned with mask_blocks {file_masks!r}, but {mask_blocks!r} was requested"
            )
        skips, masks = tuple(file_skips), parse_mask_blocks(file_masks)
    vision = build_vit_neck(arch, size, skips, masks)
    if pruned is not None:
        ckpt_io.load_pruned_state(vision, pruned, backbone_checkpoint)
    return vision, removed_block_keys("", skips, masks)


def build_vision_backbone(
    backbone: str,
    image_size: Optional[int] = None,
    sam3_checkpoint: Optional[str] = None,
    backbone_checkpoint: Optional[str] = None,
    timm_weights: Optional[str] = None,
    skip_blocks: Optional[Sequence[int]] = None,
    mask_blocks: Optional[str] = None,
    seed: int = 0,
    device: str = "cpu",
) -> Tuple[nn.Module, str]:
    """Only the vision backbone of a preset (for distillation and pruning), and its identity.

    ViT presets take their weights from a pruned checkpoint, else from the vision keys of
    ``sam3.pt``; students from a student checkpoint (their timm part from ``timm_weights``).
    """
    preset = get_preset(backbone)
    arch = get_arch(preset.arch)
    size = image_size or arch.default_image_size
    with _seeded_on(device, seed):
        vision, removed = _build_vision(preset, arch, size, backbone_checkpoint, timm_weights, skip_blocks, mask_blocks)
        if preset.kind == "vit" and not backbone_checkpoint and sam3_checkpoint:
            state = ckpt_io.read_sam3_state(sam3_checkpoint)
            prefix = ckpt_io.VISION_PREFIX
            vision_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            ckpt_io.load_into(
                vision, vision_state, f"vision keys of {sam3_checkpoint!r}", ignore_prefixes=("sam2_convs.",) + removed
            )
    source = backbone_checkpoint or sam3_checkpoint
    identity = f"{preset.name}:{size}:" + (ckpt_io.file_fingerprint(source) if source else f"random{seed}")
    return vision.eval(), identity


class _NoTextEncoder(nn.Module):
    """Stands in for the text encoder when a deployment serves its vocabulary from a text cache."""

    def forward(self, *args, **kwargs):
        raise RuntimeError(
            "this model was built without its text encoder (load_text_encoder=False); "
            "only class names present in the text cache can be used"
        )
