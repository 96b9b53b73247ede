"""Reading and writing the three checkpoint formats DART uses (DART_METHOD.md §1.1, §5.5, §6.4).

* ``sam3.pt``: a flat state dict (or ``{"model": ...}``) whose detector keys start with
  ``detector.``; tracker keys and the mask head are ignored here (detection only).
* student: ``{"student_state_dict": StudentBackbone state dict, "adapter_state_dict": adapters
  only, ...}``.
* pruned: ``{"pruned_state_dict": Sam3DualViTDetNeck state dict without the removed blocks,
  "skip_blocks": [...], "mask_blocks": "i:attn,...", ...}``.

Everything is read with ``torch.load(weights_only=True)``. A file that does not fit the model
raises :class:`CheckpointError` naming the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import torch
from torch import nn

log = logging.getLogger(__name__)

# Buffers that are a pure function of the input size: recomputed, never loaded.
DERIVED_KEY_SUFFIXES = (".attn.freqs_cis",)
# Parts of sam3.pt that a detection-only model does not have.
SAM3_IGNORED_PREFIXES = (
    "segmentation_head.",
    "backbone.vision_backbone.sam2_convs.",
    "inst_interactive_predictor.",
)
SAM3_PREFIX = "detector."
VISION_PREFIX = "backbone.vision_backbone."
TEXT_PREFIX = "backbone.language_backbone."


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, of the wrong format or does not fit the model."""


def _load_file(path: str) -> dict:
    if not path or not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path!r}")
    with open(path, "rb") as f:
        head = f.read(64)
    # torch.save writes a zip archive (or, before torch 1.6, a pickle stream): anything else gets a
    # plain explanation instead of an unpickler's error code
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        try:
            kind = f"text starting {head.decode('utf-8').splitlines()[0][:30]!r}" if head else "an empty file"
        except (UnicodeDecodeError, IndexError):
            kind = "neither a zip archive nor a pickle"
        raise CheckpointError(f"{path!r} is not a PyTorch checkpoint ({kind})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types; only their first line is useful
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        raise CheckpointError(f"cannot read checkpoint {path!r} ({type(e).__name__}: {first})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path!r} holds a {type(obj).__name__}, expected a dict")
    return obj


def _is_derived(key: str) -> bool:
    return key.endswith(DERIVED_KEY_SUFFIXES)


def _summarise(keys: Sequence[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_into(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    ignore_prefixes: Iterable[str] = (),
    allow_unexpected: bool = False,
) -> None:
    """Load ``state`` into ``module``, failing with every mismatch listed.

    Keys under ``ignore_prefixes`` are neither required nor loaded. Derived buffers (RoPE tables)
    are recomputed for the model's input size and are never loaded.
    """
    ignore = tuple(ignore_prefixes)
    expected = {k: v for k, v in module.state_dict().items() if not _is_derived(k) and not k.startswith(ignore)}
    given = {k: v for k, v in state.items() if not _is_derived(k) and not k.startswith(ignore)}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_summarise(missing)}")
    if unexpected and not allow_unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_summarise(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {_summarise(shapes)}")
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))
    if unexpected:
        log.warning("%s: ignoring %d keys the model does not have: %s", source, len(unexpected), _summarise(unexpected))
    module.load_state_dict({k: given[k] for k in expected}, strict=False)


# ---------------------------------------------------------------------------------------------
# sam3.pt


def read_sam3_state(path: str) -> Dict[str, torch.Tensor]:
    """The detector state dict of a ``sam3.pt`` file, with the ``detector.`` prefix stripped."""
    ckpt = _load_file(path)
    if isinstance(ckpt.get("model"), dict):
        ckpt = ckpt["model"]
    state = {k[len(SAM3_PREFIX) :]: v for k, v in ckpt.items() if k.startswith(SAM3_PREFIX)}
    if not state:
        hint = ""
        if "student_state_dict" in ckpt or "pruned_state_dict" in ckpt:
            hint = " (this is a DART backbone checkpoint: pass it as the backbone checkpoint)"
        raise CheckpointError(f"{path!r} has no 'detector.*' keys; not a SAM3 checkpoint{hint}")
    return state


def load_sam3_checkpoint(
    sam3_model: nn.Module,
    path: str,
    load_vision: bool = True,
    load_text: bool = True,
    vision_removed_prefixes: Sequence[str] = (),
) -> None:
    """Load ``sam3.pt`` into a model from :func:`dart_ros.model.build.build_sam3_image`.

    Args:
        load_vision: False when the vision backbone comes from another checkpoint (student, pruned).
        load_text: False when the text encoder is not built (a text cache serves the vocabulary).
        vision_removed_prefixes: keys of pruned blocks, present in the file but not in the model.
    """
    state = read_sam3_state(path)
    ignore = list(SAM3_IGNORED_PREFIXES)
    if not load_vision:
        ignore.append(VISION_PREFIX)
    if not load_text:
        ignore.append(TEXT_PREFIX)
    ignore += [VISION_PREFIX + p for p in vision_removed_prefixes]
    load_into(sam3_model, state, f"SAM3 checkpoint {path!r}", ignore_prefixes=ignore)


def save_sam3_checkpoint(sam3_model: nn.Module, path: str) -> None:
    """Write the model in the ``sam3.pt`` layout (``detector.`` prefix), e.g. for tests."""
    state = {SAM3_PREFIX + k: v.detach().cpu() for k, v in sam3_model.state_dict().items()}
    torch.save({"model": state}, path)


# ---------------------------------------------------------------------------------------------
# DART student


def _strip_module(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def load_student_checkpoint(student: nn.Module, path: str) -> dict:
    """Load ``student_state_dict`` (or, failing that, ``adapter_state_dict``) into a student."""
    ckpt = _load_file(path)
    if "student_state_dict" in ckpt:
        load_into(student, _strip_module(ckpt["student_state_dict"]), f"student checkpoint {path!r}")
    elif "adapter_state_dict" in ckpt:
        # Adapter-only files pair with timm weights loaded separately.
        load_into(
            student,
            _strip_module(ckpt["adapter_state_dict"]),
            f"student checkpoint {path!r}",
            ignore_prefixes=("backbone.",),
        )
    else:
        raise CheckpointError(
            f"{path!r} is not a DART student checkpoint: expected 'student_state_dict' or "
            f"'adapter_state_dict', found keys {sorted(ckpt)[:10]}"
        )
    return {k: v for k, v in ckpt.items() if not k.endswith("state_dict")}


def save_student_checkpoint(student: nn.Module, path: str, **extra) -> None:
    state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
    adapters = {k: v for k, v in state.items() if k.startswith("adapters.")}
    torch.save({"student_state_dict": state, "adapter_state_dict": adapters, **extra}, path)


# ---------------------------------------------------------------------------------------------
# DART pruned ViT


def read_pruned_header(path: str) -> Tuple[dict, List[int], str]:
    """(checkpoint, skip_blocks, mask_blocks string) of a DART pruned checkpoint."""
    ckpt = _load_file(path)
    if "pruned_state_dict" not in ckpt:
        raise CheckpointError(
            f"{path!r} is not a DART pruned checkpoint: no 'pruned_state_dict' (keys {sorted(ckpt)[:10]})"
        )
    skip = ckpt.get("skip_blocks") or []
    try:
        skip = sorted(int(i) for i in skip)
    except (TypeError, ValueError):
        raise CheckpointError(f"{path!r}: 'skip_blocks' must be a list of ints, got {skip!r}") from None
    mask = ckpt.get("mask_blocks") or ""
    if not isinstance(mask, str):
        raise CheckpointError(f"{path!r}: 'mask_blocks' must be a string, got {type(mask).__name__}")
    return ckpt, skip, mask


def load_pruned_state(neck: nn.Module, ckpt: dict, path: str) -> None:
    load_into(neck, _strip_module(ckpt["pruned_state_dict"]), f"pruned checkpoint {path!r}")


def save_pruned_checkpoint(
    neck: nn.Module, path: str, skip_blocks: Sequence[int], mask_blocks: str = "", **extra
) -> None:
    state = {k: v.detach().cpu() for k, v in neck.state_dict().items() if not _is_derived(k)}
    torch.save(
        {
            "pruned_state_dict": state,
            "skip_blocks": sorted(int(i) for i in skip_blocks),
            "mask_blocks": mask_blocks,
            **extra,
        },
        path,
    )


# ---------------------------------------------------------------------------------------------


def file_fingerprint(path: str, chunk: int = 8 << 20) -> str:
    """A cheap identity for a large weight file: sha256 of its size, head and tail."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(size - chunk, chunk))
            h.update(f.read(chunk))
    return h.hexdigest()[:16]
