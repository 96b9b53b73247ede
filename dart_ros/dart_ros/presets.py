"""Backbone presets (the ``backbone:=`` values): the one list of backbones and the default.

Plain data, no torch: the node's parameter descriptions, the launch logic and the CLIs read it
without loading the model stack. :mod:`dart_ros.model.registry` builds models from it.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

# DART's greedy skip-16 list for ViT-H (DART_METHOD.md §6.1); all window blocks.
DART_SKIP16 = (5, 10, 12, 14, 17, 18, 19, 20, 21, 22, 24, 25, 26, 27, 28, 30)


@dataclasses.dataclass(frozen=True)
class BackbonePreset:
    name: str
    arch: str  # "full" | "tiny"
    kind: str  # "vit" | "student"
    student: Optional[str] = None  # key of dart_ros.model.student.STUDENTS
    skip_blocks: Tuple[int, ...] = ()
    description: str = ""
    paper_coco_ap: Optional[float] = None  # the DART paper's COCO val2017 box AP (not measured here)


PRESETS = {
    p.name: p
    for p in (
        BackbonePreset("vit_h", "full", "vit", description="SAM3 ViT-H/14, 32 blocks (teacher)", paper_coco_ap=55.8),
        BackbonePreset(
            "vit_h_pruned16",
            "full",
            "vit",
            skip_blocks=DART_SKIP16,
            description="ViT-H with 16 window blocks removed (DART Pruned-16)",
            paper_coco_ap=53.6,
        ),
        BackbonePreset(
            "repvit_m2_3",
            "full",
            "student",
            student="repvit_m2_3",
            description="RepViT-M2.3 student + FPN adapter",
            paper_coco_ap=38.7,
        ),
        BackbonePreset(
            "tiny_vit_21m",
            "full",
            "student",
            student="tiny_vit_21m",
            description="TinyViT-21M student + FPN adapter",
            paper_coco_ap=30.1,
        ),
        BackbonePreset(
            "efficientvit_l1",
            "full",
            "student",
            student="efficientvit_l1",
            description="EfficientViT-L1 student + FPN adapter",
            paper_coco_ap=16.3,
        ),
        BackbonePreset(
            "efficientvit_l2",
            "full",
            "student",
            student="efficientvit_l2",
            description="EfficientViT-L2 student + FPN adapter",
            paper_coco_ap=21.7,
        ),
        BackbonePreset("tiny", "tiny", "vit", description="tiny SAM3-shaped model for tests and demos"),
        BackbonePreset("tiny_pruned", "tiny", "vit", skip_blocks=(2,), description="tiny with a skipped block"),
        BackbonePreset(
            "tiny_student",
            "tiny",
            "student",
            student="test_convnext",
            description="tiny encoder-decoder with timm's test_convnext student",
        ),
    )
}

# The library's, the node's and the launch file's default: the model SAM3's own checkpoint runs.
DEFAULT_BACKBONE = "vit_h"
# Full-size presets, in the order the docs list them.
FULL_SIZE_BACKBONES = tuple(name for name, p in PRESETS.items() if p.arch == "full")
# What the launch file offers: every full-size preset plus the random-weight tiny model for trials.
LAUNCH_BACKBONES = FULL_SIZE_BACKBONES + ("tiny",)


def list_backbones(kind: str = "") -> Tuple[str, ...]:
    """Preset names, all or those of one kind (``vit`` or ``student``)."""
    return tuple(n for n, p in PRESETS.items() if not kind or p.kind == kind)


def get_preset(name: str) -> BackbonePreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(PRESETS)}") from None
