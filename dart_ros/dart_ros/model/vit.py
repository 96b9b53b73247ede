"""ViT-H (and tiny ViT) vision backbone: detection-only neck and block pruning.

Pruning is applied per instance by replacing entries of ``trunk.blocks``; nothing in ``sam3`` is
patched globally. ``ViT.forward`` only keys on the index of the last global block (protected here),
so an identity module in place of a skipped block is safe (DART_METHOD.md §2.10).
"""

from __future__ import annotations

from typing import Dict, Iterable, Sequence, Set, Tuple

import torch
from torch import nn

from dart_ros.model.arch import Sam3Arch
from dart_ros.model.build import build_vit_trunk, position_encoding

DETECTION_SCALE = 1.0  # the stride-14 level, the only one the encoder-decoder consumes


def _neck_class():
    from sam3.model.necks import Sam3DualViTDetNeck

    class DetectionViTNeck(Sam3DualViTDetNeck):
        """``Sam3DualViTDetNeck`` that can also compute only the detection level.

        ``forward`` keeps the full sam3 contract (all FPN levels) for the reference path and for
        distillation; ``forward_detection`` runs the trunk and the single conv branch that produces
        the stride-14 map, skipping the 4x/2x transposed convolutions (85 MB of fp32 at 1008).
        """

        def forward_detection(self, x: torch.Tensor) -> torch.Tensor:
            """(B, 3, S, S) normalised pixels -> (B, d_model, P, P) features."""
            level = self.scale_factors.index(DETECTION_SCALE)
            return self.convs[level](self.trunk(x)[-1])

        def forward_levels(self, x: torch.Tensor, levels=(0, 1, 2)):
            """The requested FPN levels (0: 4P², 1: 2P², 2: P²), sharing one trunk pass."""
            feat = self.trunk(x)[-1]
            return [self.convs[i](feat) for i in levels]

    return DetectionViTNeck


class SkippedBlock(nn.Identity):
    """Placeholder for a ViT block removed by pruning (it owns no parameters)."""


class MaskedBlock(nn.Module):
    """A ViT block with its attention and/or MLP residual branch removed.

    Child modules keep the names of ``sam3.model.vitdet.Block`` (``norm1``, ``attn``, ``ls1``,
    ``norm2``, ``mlp``, ``ls2``) so that state-dict keys are those of the unpruned block minus the
    removed branch, as in the DART pruned checkpoint format (DART_METHOD.md §6.4).
    """

    def __init__(self, block: nn.Module, drop_attn: bool, drop_mlp: bool):
        super().__init__()
        self.drop_attn = drop_attn
        self.drop_mlp = drop_mlp
        self.window_size = block.window_size
        self.drop_path = block.drop_path
        self.dropout = block.dropout
        if not drop_attn:
            self.norm1, self.attn, self.ls1 = block.norm1, block.attn, block.ls1
        if not drop_mlp:
            self.norm2, self.mlp, self.ls2 = block.norm2, block.mlp, block.ls2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from sam3.model.vitdet import window_partition, window_unpartition

        if not self.drop_attn:
            shortcut = x
            x = self.norm1(x)
            if self.window_size > 0:
                h, w = x.shape[1], x.shape[2]
                x, pad_hw = window_partition(x, self.window_size)
            x = self.ls1(self.attn(x))
            if self.window_size > 0:
                x = window_unpartition(x, self.window_size, pad_hw, (h, w))
            x = shortcut + self.dropout(self.drop_path(x))
        if not self.drop_mlp:
            x = x + self.dropout(self.drop_path(self.ls2(self.mlp(self.norm2(x)))))
        return x


MaskSpec = Dict[int, Set[str]]  # block index -> {"attn", "mlp"}


def parse_mask_blocks(spec: str | Iterable[Tuple[int, str]] | None) -> MaskSpec:
    """Parse the DART sub-block string ``"25:attn,28:mlp"`` (or pairs) into {block: {kinds}}."""
    out: MaskSpec = {}
    if not spec:
        return out
    items = spec.split(",") if isinstance(spec, str) else [f"{i}:{k}" for i, k in spec]
    for item in items:
        item = item.strip()
        if not item:
            continue
        try:
            idx_s, kind = item.split(":")
            idx = int(idx_s)
        except ValueError:
            raise ValueError(f"bad mask-block entry {item!r}; expected 'INDEX:attn' or 'INDEX:mlp'") from None
        kind = kind.strip().lower()
        if kind not in ("attn", "mlp"):
            raise ValueError(f"bad mask-block kind {kind!r} in {item!r}; expected 'attn' or 'mlp'")
        out.setdefault(idx, set()).add(kind)
    return out


def format_mask_blocks(mask: MaskSpec) -> str:
    return ",".join(f"{i}:{k}" for i in sorted(mask) for k in sorted(mask[i]))


def validate_pruning(arch: Sam3Arch, skip_blocks: Sequence[int], mask: MaskSpec) -> None:
    protected = set(arch.global_blocks)
    for i in list(skip_blocks) + list(mask):
        if not 0 <= i < arch.depth:
            raise ValueError(f"block index {i} out of range for a {arch.depth}-block trunk")
        if i in protected:
            raise ValueError(
                f"block {i} is a global-attention block {sorted(protected)}; global blocks cannot be pruned"
            )
    both = set(skip_blocks) & set(mask)
    if both:
        raise ValueError(f"blocks {sorted(both)} are both skipped and sub-block masked")


def apply_pruning(trunk: nn.Module, arch: Sam3Arch, skip_blocks: Sequence[int], mask: MaskSpec) -> None:
    """Replace skipped blocks by :class:`SkippedBlock` and masked ones by :class:`MaskedBlock`."""
    validate_pruning(arch, skip_blocks, mask)
    for i in skip_blocks:
        trunk.blocks[i] = SkippedBlock()
    for i, kinds in mask.items():
        drop_attn, drop_mlp = "attn" in kinds, "mlp" in kinds
        if drop_attn and drop_mlp:
            trunk.blocks[i] = SkippedBlock()
        else:
            trunk.blocks[i] = MaskedBlock(trunk.blocks[i], drop_attn=drop_attn, drop_mlp=drop_mlp)


def removed_block_keys(prefix: str, skip_blocks: Sequence[int], mask: MaskSpec) -> Tuple[str, ...]:
    """State-dict key prefixes that pruning removes (relative to the neck, e.g. ``trunk.blocks.5.``)."""
    out = [f"{prefix}trunk.blocks.{i}." for i in skip_blocks]
    for i, kinds in mask.items():
        if {"attn", "mlp"} <= kinds:
            out.append(f"{prefix}trunk.blocks.{i}.")
            continue
        names = ("norm1", "attn", "ls1") if "attn" in kinds else ("norm2", "mlp", "ls2")
        out += [f"{prefix}trunk.blocks.{i}.{n}." for n in names]
    return tuple(out)


def build_vit_neck(
    arch: Sam3Arch,
    image_size: int,
    skip_blocks: Sequence[int] = (),
    mask_blocks: MaskSpec | None = None,
) -> nn.Module:
    """The SAM3 vision backbone (trunk + simple-FPN neck), optionally pruned."""
    trunk = build_vit_trunk(arch, image_size)
    apply_pruning(trunk, arch, tuple(skip_blocks), mask_blocks or {})
    neck = _neck_class()(
        trunk=trunk,
        position_encoding=position_encoding(arch),
        d_model=arch.d_model,
        scale_factors=[4.0, 2.0, 1.0, 0.5],
        add_sam2_neck=False,
    )
    neck.skip_blocks = tuple(sorted(skip_blocks))
    neck.mask_blocks = dict(mask_blocks or {})
    return neck
