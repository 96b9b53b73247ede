"""Adapter distillation: a frozen timm student learns SAM3's FPN levels through its FPN adapter.

Teacher: the ViT-H vision backbone (optionally pruned), frozen. Student: a registered student
preset (timm ``features_only`` network, frozen, plus the trainable adapter). Checkpoints are in the
DART student format (DART_METHOD.md §5.5), so released DART adapters and ours are interchangeable.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar, Dict, Tuple

from dart_ros.model.registry import build_vision_backbone
from dart_ros.presets import get_preset, list_backbones
from dart_ros.training import distributed as D
from dart_ros.training.data import list_images
from dart_ros.training.trainer import FeatureDistiller, TrainConfig, claim_out_dir

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DistillConfig(TrainConfig):
    """Adapter distillation settings (see TrainConfig for the shared ones; help in FIELD_HELP)."""

    teacher: str = "vit_h"
    student: str = "repvit_m2_3"
    sam3_checkpoint: str = ""
    teacher_checkpoint: str = ""
    teacher_mask_blocks: str = ""
    timm_weights: str = ""
    init_checkpoint: str = ""
    out_dir: str = "runs/distill"

    FIELD_HELP: ClassVar[Dict[str, str]] = {
        **TrainConfig.FIELD_HELP,
        "teacher": "teacher ViT preset: " + ", ".join(list_backbones("vit")),
        "student": "student preset: " + ", ".join(list_backbones("student")),
        "sam3_checkpoint": "sam3.pt: the teacher's weights (empty = a RANDOM teacher, for tests only)",
        "teacher_checkpoint": "a DART pruned checkpoint as the teacher (instead of the full ViT-H)",
        "teacher_mask_blocks": "sub-block-pruned teacher: comma-separated block:branch items, branch attn or mlp "
        '(e.g. "25:attn,28:mlp")',
        "timm_weights": "local ImageNet weights (.safetensors/.pth) of the student's timm network",
        "init_checkpoint": "start the adapter from this DART student checkpoint (e.g. a phase-2 run)",
    }
    FILE_FIELDS: ClassVar[Tuple[str, ...]] = (
        "sam3_checkpoint", "teacher_checkpoint", "timm_weights", "init_checkpoint",
    )  # fmt: skip


def run(cfg: DistillConfig) -> dict:
    cfg.validate()
    if get_preset(cfg.student).kind != "student":
        raise ValueError(f"--student {cfg.student!r} is not a student preset")
    if get_preset(cfg.teacher).kind != "vit":
        raise ValueError(f"--teacher {cfg.teacher!r} is not a ViT preset")
    paths = list_images(cfg.images)
    env = D.init(cfg.device)
    try:
        claim_out_dir(cfg, env, paths)
        size = cfg.image_size or None
        teacher, teacher_id = build_vision_backbone(
            cfg.teacher,
            size,
            sam3_checkpoint=cfg.sam3_checkpoint or None,
            backbone_checkpoint=cfg.teacher_checkpoint or None,
            mask_blocks=cfg.teacher_mask_blocks or None,
            device=str(env.device),
        )
        if not (cfg.sam3_checkpoint or cfg.teacher_checkpoint) and env.is_main:
            log.warning("no teacher weights: distilling from a RANDOM teacher (only useful for testing)")
        student, _ = build_vision_backbone(
            cfg.student,
            size,
            timm_weights=cfg.timm_weights or None,
            backbone_checkpoint=cfg.init_checkpoint or None,
            seed=cfg.seed + 1,
            device=str(env.device),
        )
        for i, adapter in enumerate(student.adapters):  # unused levels: frozen (DDP needs every trained param used)
            adapter.requires_grad_(cfg.level_weights[i] > 0)
        image_size = student.target_sizes[2] * 14

        def payload(epoch, loss):
            state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
            return {
                "epoch": epoch,
                "loss": loss,
                "student_state_dict": state,
                "adapter_state_dict": {k: v for k, v in state.items() if k.startswith("adapters.")},
                "mask_blocks": cfg.teacher_mask_blocks,
                "student": cfg.student,
                "teacher": teacher_id,
            }

        def final(epoch, loss):
            return {
                "epoch": epoch,
                "loss": loss,
                "student": cfg.student,
                "student_state_dict": {k: v.detach().cpu() for k, v in student.state_dict().items()},
            }

        def restore(ckpt):
            student.load_state_dict(ckpt["student_state_dict"])

        trainer = FeatureDistiller(
            cfg,
            env,
            teacher,
            student,
            paths,
            image_size,
            teacher_id,
            payload,
            restore,
            final,
            prefix="adapter",
        )
        return trainer.train()
    finally:
        D.cleanup(env)
