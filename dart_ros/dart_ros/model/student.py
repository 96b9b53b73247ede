"""Distilled student backbones: a frozen timm ``features_only`` model plus a trainable FPN adapter.

The module layout (``backbone.*`` timm keys, ``adapters.{0,1,2}.{proj,refine}.*``) is the DART
student checkpoint layout (DART_METHOD.md §5.2, §5.5), so released DART adapters load unchanged.
Channels and strides are read from timm's ``feature_info``; adding a student is one registry entry.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dart_ros.model.arch import Sam3Arch
from dart_ros.model.build import position_encoding

STUDENT_STRIDES = (4, 8, 16)
# Target side of each adapter level relative to P = S/14: 4P, 2P, P (288/144/72 at 1008).
LEVEL_SCALES = (4, 2, 1)
DETECTION_LEVEL = 2


@dataclasses.dataclass(frozen=True)
class StudentSpec:
    timm_name: str
    description: str = ""


STUDENTS = {
    "repvit_m2_3": StudentSpec("repvit_m2_3", "RepViT-M2.3"),
    "tiny_vit_21m": StudentSpec("tiny_vit_21m_224", "TinyViT-21M"),
    "efficientvit_l1": StudentSpec("efficientvit_l1", "EfficientViT-L1"),
    "efficientvit_l2": StudentSpec("efficientvit_l2", "EfficientViT-L2"),
    # timm's own 0.1 M-parameter test network: the tests' student, on the same code path.
    "test_convnext": StudentSpec("test_convnext", "timm test network, for tests"),
}


class FPNAdapterLevel(nn.Module):
    """1x1 projection -> bilinear resize to the teacher's grid -> 3x3 refinement (no norm/act)."""

    def __init__(self, in_channels: int, d_model: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, d_model, kernel_size=1)
        self.refine = nn.Conv2d(d_model, d_model, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, size: int) -> torch.Tensor:
        x = self.proj(x)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return self.refine(x)


def create_timm_features(timm_name: str, weights_file: Optional[str] = None) -> nn.Module:
    """A timm feature extractor at strides 4/8/16; pretrained weights only from a local file."""
    import timm

    kwargs = {}
    if weights_file:
        # An explicit local file: timm reads it instead of contacting a hub.
        kwargs = dict(pretrained=bool(weights_file), pretrained_cfg_overlay=dict(file=weights_file))
    probe = timm.create_model(timm_name, features_only=True, **kwargs)
    reductions = probe.feature_info.reduction()
    missing = [s for s in STUDENT_STRIDES if s not in reductions]
    if missing:
        raise ValueError(
            f"timm model {timm_name!r} has feature strides {reductions}; a DART student needs {STUDENT_STRIDES}"
        )
    if list(reductions) == list(STUDENT_STRIDES):
        return probe
    out_indices = tuple(reductions.index(s) for s in STUDENT_STRIDES)
    return timm.create_model(timm_name, features_only=True, out_indices=out_indices, **kwargs)


class StudentBackbone(nn.Module):
    """A timm student that produces SAM3-compatible FPN levels (256 x 4P², 2P², P²).

    ``forward`` follows the ``Sam3DualViTDetNeck`` contract (features, position encodings, None,
    None) so the student drops into ``SAM3VLBackbone`` (built with ``scalp=0``).
    The timm network is frozen and kept in eval mode, as in DART (its BatchNorm statistics stay).
    """

    def __init__(
        self,
        timm_name: str,
        arch: Sam3Arch,
        image_size: int,
        timm_weights: Optional[str] = None,
    ):
        super().__init__()
        p = arch.feature_size(image_size)
        self.backbone = create_timm_features(timm_name, timm_weights)
        channels = self.backbone.feature_info.channels()
        self.adapters = nn.ModuleList(FPNAdapterLevel(c, arch.d_model) for c in channels)
        self.target_sizes = tuple(s * p for s in LEVEL_SCALES)
        self.position_encoding = position_encoding(arch)
        self.timm_name = timm_name
        for q in self.backbone.parameters():
            q.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def forward_levels(self, x: torch.Tensor, levels: Sequence[int] = (0, 1, 2)) -> List[torch.Tensor]:
        feats = self.backbone(x)
        return [self.adapters[i](feats[i], self.target_sizes[i]) for i in levels]

    def forward_detection(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, d_model, P, P) features."""
        return self.forward_levels(x, (DETECTION_LEVEL,))[0]

    def forward(self, x: torch.Tensor):
        out = self.forward_levels(x)
        pos = [self.position_encoding(o).to(o.dtype) for o in out]
        return out, pos, None, None
