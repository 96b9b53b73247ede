"""ViT block pruning: importance analysis, greedy search, self-distillation, DART pruned checkpoint.

Importance is measured on the features detection consumes (the stride-14 neck output, P²×256),
with the model's own preprocessing, against the unpruned backbone: mean squared error and cosine
over calibration images. Candidates are whole window blocks (``block`` mode) or their attention /
MLP branches (``subblock`` mode); global-attention blocks are never candidates. The greedy search
removes, step by step, the candidate whose removal (together with those already removed) hurts
least. The pruned backbone is then self-distilled against the full one with the shared trainer and
saved in the DART pruned format (``pruned_state_dict`` + ``skip_blocks`` + ``mask_blocks``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
from typing import ClassVar, Dict, List, Sequence, Tuple

import torch
from torch import nn

from dart_ros.model.arch import Sam3Arch, get_arch
from dart_ros.model.registry import build_vision_backbone
from dart_ros.model.vit import MaskedBlock, MaskSpec, SkippedBlock, format_mask_blocks, parse_mask_blocks
from dart_ros.presets import get_preset, list_backbones
from dart_ros.training import distributed as D
from dart_ros.training.data import UNREADABLE_LIST, ImageDataset, list_images
from dart_ros.training.trainer import FeatureDistiller, TrainConfig, claim_out_dir

log = logging.getLogger(__name__)

Candidate = Tuple[int, str]  # (block, "block" | "attn" | "mlp")


@dataclasses.dataclass
class PruneConfig(TrainConfig):
    """Pruning settings (see TrainConfig for the training ones; help in FIELD_HELP)."""

    backbone: str = "vit_h"
    sam3_checkpoint: str = ""
    mode: str = "block"
    num_remove: int = 16
    calibration_images: int = 20
    calibration_batch: int = 4
    skip_blocks: Tuple[int, ...] = ()
    mask_blocks: str = ""
    analyze_only: bool = False
    lr: float = 1e-4
    out_dir: str = "runs/prune"

    FIELD_HELP: ClassVar[Dict[str, str]] = {
        **TrainConfig.FIELD_HELP,
        "backbone": "ViT preset to prune: " + ", ".join(list_backbones("vit")),
        "sam3_checkpoint": "sam3.pt: the weights to prune (empty = a RANDOM backbone, for tests only)",
        "mode": "block: remove whole window blocks; subblock: remove attention or MLP branches",
        "num_remove": "candidates the greedy search removes (at most the model's window blocks, twice that in "
        "subblock mode; global-attention blocks are never removed)",
        "calibration_images": "images the importance analysis measures on (evenly spread over --images)",
        "calibration_batch": "images per forward pass of the analysis",
        "skip_blocks": "prune exactly these block indices (no search), e.g. 5 10 12",
        "mask_blocks": 'drop exactly these branches (no search): comma-separated block:branch, e.g. "25:attn,28:mlp"',
        "analyze_only": "true: write prune_report.json/png and stop (no self-distillation)",
    }
    FILE_FIELDS: ClassVar[Tuple[str, ...]] = ("sam3_checkpoint",)


def candidates(arch: Sam3Arch, mode: str) -> List[Candidate]:
    windows = [i for i in range(arch.depth) if i not in arch.global_blocks]
    if mode == "block":
        return [(i, "block") for i in windows]
    if mode == "subblock":
        return [(i, k) for i in windows for k in ("attn", "mlp")]
    raise ValueError(f"mode must be 'block' or 'subblock', got {mode!r}")


def to_pruning(removed: Sequence[Candidate]) -> Tuple[List[int], MaskSpec]:
    """Removed candidates -> (skip_blocks, mask spec); a block losing both branches is skipped."""
    skip = sorted(i for i, k in removed if k == "block")
    mask: MaskSpec = {}
    for i, k in removed:
        if k != "block":
            mask.setdefault(i, set()).add(k)
    for i in [i for i, kinds in mask.items() if kinds == {"attn", "mlp"}]:
        del mask[i]
        skip.append(i)
    return sorted(skip), mask


@contextlib.contextmanager
def temporarily_pruned(trunk: nn.Module, removed: Sequence[Candidate]):
    """Swap blocks for skipped/masked versions, restoring the originals afterwards."""
    skip, mask = to_pruning(removed)
    saved = {}
    for i in skip:
        saved[i] = trunk.blocks[i]
        trunk.blocks[i] = SkippedBlock()
    for i, kinds in mask.items():
        saved[i] = trunk.blocks[i]
        trunk.blocks[i] = MaskedBlock(saved[i], drop_attn="attn" in kinds, drop_mlp="mlp" in kinds)
    try:
        yield
    finally:
        for i, blk in saved.items():
            trunk.blocks[i] = blk


def block_flops(arch: Sam3Arch, image_size: int) -> Dict[Candidate, float]:
    """Approximate FLOPs of each block's attention and MLP branch at ``image_size`` (for estimates)."""
    p = arch.feature_size(image_size)
    tokens, c = p * p, arch.embed_dim
    hidden = int(c * arch.mlp_ratio)
    out = {}
    for i in range(arch.depth):
        span = tokens if i in arch.global_blocks else arch.window_size**2
        n_windows = 1 if i in arch.global_blocks else math.ceil(p / arch.window_size) ** 2
        padded = tokens if i in arch.global_blocks else n_windows * span
        attn = 2 * padded * c * 4 * c + 4 * n_windows * span * span * c
        mlp = 4 * tokens * c * hidden
        out[(i, "attn")], out[(i, "mlp")] = float(attn), float(mlp)
        out[(i, "block")] = float(attn + mlp)
    return out


def estimated_speedup(arch: Sam3Arch, image_size: int, removed: Sequence[Candidate]) -> float:
    flops = block_flops(arch, image_size)
    total = sum(flops[(i, "block")] for i in range(arch.depth))
    skip, mask = to_pruning(removed)
    cut = sum(flops[(i, "block")] for i in skip) + sum(flops[(i, k)] for i, ks in mask.items() for k in ks)
    return total / max(total - cut, 1e-9)


@torch.no_grad()
def analyse(
    neck: nn.Module,
    arch: Sam3Arch,
    image_paths: Sequence[str],
    image_size: int,
    mode: str,
    num_remove: int,
    batch: int,
    device: torch.device,
    show_progress: bool = True,
    unreadable_log: str = "",
    strict_images: bool = False,
) -> dict:
    """Single-candidate ranking and greedy search; returns the report dict."""
    from tqdm import tqdm

    data = ImageDataset(image_paths, image_size, unreadable_log=unreadable_log, strict=strict_images)
    batches = [
        torch.stack([data[j][1] for j in range(i, min(i + batch, len(data)))]).to(device)
        for i in range(0, len(data), batch)
    ]
    reference = [neck.forward_detection(x).float() for x in batches]

    def score(removed: Sequence[Candidate]) -> Tuple[float, float]:
        with temporarily_pruned(neck.trunk, removed):
            mse, cos, n = 0.0, 0.0, 0
            for x, ref in zip(batches, reference, strict=True):
                out = neck.forward_detection(x).float()
                mse += float(((out - ref) ** 2).mean()) * x.shape[0]
                cos += float(nn.functional.cosine_similarity(out.flatten(1), ref.flatten(1)).sum())
                n += x.shape[0]
        return mse / n, cos / n

    cands = candidates(arch, mode)
    num_remove = min(num_remove, len(cands))
    single = []
    for c in tqdm(cands, desc="single-candidate importance", disable=not show_progress):
        mse, cos = score([c])
        single.append({"candidate": list(c), "mse": mse, "cosine": cos})
    single.sort(key=lambda r: r["mse"])
    removed: List[Candidate] = []
    steps = []
    for _ in tqdm(range(num_remove), desc="greedy search", disable=not show_progress):
        best = None
        for c in cands:
            if c in removed or (c[1] != "block" and (c[0], "block") in removed):
                continue
            mse, cos = score(removed + [c])
            if best is None or mse < best[1]:
                best = (c, mse, cos)
        removed.append(best[0])
        steps.append(
            {
                "removed": [list(r) for r in removed],
                "added": list(best[0]),
                "mse": best[1],
                "cosine": best[2],
                "estimated_speedup": estimated_speedup(arch, image_size, removed),
            }
        )
    skip, mask = to_pruning(removed)
    return {
        "mode": mode,
        "image_size": image_size,
        "calibration_images": len(image_paths),
        "metric": "MSE / cosine of the stride-14 detection features vs the unpruned backbone",
        "single": single,
        "greedy": steps,
        "skip_blocks": skip,
        "mask_blocks": format_mask_blocks(mask),
    }


def plot_report(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = report["greedy"]
    if not steps:
        return
    x = list(range(1, len(steps) + 1))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [s["mse"] for s in steps], marker="o", color="C0")
    ax.set(
        xlabel=f"{report['mode']}s removed (greedy)",
        ylabel="feature MSE",
        yscale="log",
        title="pruning: detection-feature loss vs removed",
    )
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(x, [s["estimated_speedup"] for s in steps], marker="s", color="C1")
    ax2.set_ylabel("estimated backbone speed-up (x)", color="C1")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(cfg: PruneConfig) -> dict:
    cfg.validate()
    if get_preset(cfg.backbone).kind != "vit":
        raise ValueError(f"--backbone {cfg.backbone!r} is not a ViT preset")
    arch = get_arch(get_preset(cfg.backbone).arch)
    if not (cfg.skip_blocks or cfg.mask_blocks):
        n = len(candidates(arch, cfg.mode))
        if not 1 <= cfg.num_remove <= n:
            raise ValueError(
                f"--num-remove {cfg.num_remove}: {cfg.backbone} has {n} {cfg.mode} candidates in {cfg.mode} mode "
                "(global-attention blocks are never removed)"
            )
    paths = list_images(cfg.images)
    env = D.init(cfg.device)
    try:
        claim_out_dir(cfg, env, paths, extra_state=("prune_report.json", "prune_report.png"))
        size = cfg.image_size or arch.default_image_size
        teacher, teacher_id = build_vision_backbone(
            cfg.backbone, size, sam3_checkpoint=cfg.sam3_checkpoint or None, skip_blocks=(), device=str(env.device)
        )
        if not cfg.sam3_checkpoint and env.is_main:
            log.warning("no sam3_checkpoint: pruning a RANDOM backbone (only useful for testing)")
        report_path = os.path.join(cfg.out_dir, "prune_report.json")
        if cfg.skip_blocks or cfg.mask_blocks:
            skip, mask = sorted(cfg.skip_blocks), parse_mask_blocks(cfg.mask_blocks)
        elif os.path.isfile(report_path) and cfg.resume:  # resume: never redo a finished search
            with open(report_path) as f:
                report = json.load(f)
            skip, mask = report["skip_blocks"], parse_mask_blocks(report["mask_blocks"])
        else:
            step = max(1, len(paths) // max(1, cfg.calibration_images))
            calib = paths[::step][: cfg.calibration_images]  # evenly strided over the sorted list
            report = analyse(
                teacher,
                arch,
                calib,
                size,
                cfg.mode,
                cfg.num_remove,
                cfg.calibration_batch,
                env.device,
                show_progress=env.is_main,
                unreadable_log=os.path.join(cfg.out_dir, UNREADABLE_LIST) if env.is_main else "",
                strict_images=cfg.strict_images,
            )
            if env.is_main:
                with open(report_path, "w") as f:
                    json.dump(report, f, indent=1)
                plot_report(report, os.path.join(cfg.out_dir, "prune_report.png"))
            skip, mask = report["skip_blocks"], parse_mask_blocks(report["mask_blocks"])
        if env.is_main:
            log.info("pruning skip_blocks=%s mask_blocks=%r", skip, format_mask_blocks(mask))
        if cfg.analyze_only:
            return {"skip_blocks": skip, "mask_blocks": format_mask_blocks(mask)}

        from dart_ros.model.vit import apply_pruning

        student = copy.deepcopy(teacher).float()  # from the fp32 teacher: no fp16-rounded start
        apply_pruning(student.trunk, arch, skip, mask)
        for i, conv in enumerate(student.convs):  # levels without loss weight (and the 0.5x level) stay frozen
            conv.requires_grad_(i < 3 and cfg.level_weights[i] > 0)
        mask_text = format_mask_blocks(mask)

        def state():
            return {k: v.detach().cpu() for k, v in student.state_dict().items() if not k.endswith(".attn.freqs_cis")}

        def payload(epoch, loss):
            return {
                "epoch": epoch,
                "loss": loss,
                "pruned_state_dict": state(),
                "skip_blocks": list(skip),
                "mask_blocks": mask_text,
                "backbone": cfg.backbone,
                "teacher": teacher_id,
            }

        def restore(ckpt):
            student.load_state_dict(ckpt["pruned_state_dict"], strict=False)

        trainer = FeatureDistiller(
            cfg, env, teacher, student, paths, size, teacher_id, payload, restore, payload, prefix="pruned"
        )
        summary = trainer.train()
        summary.update(skip_blocks=list(skip), mask_blocks=mask_text)
        return summary
    finally:
        D.cleanup(env)
