"""The one typed configuration of a Detector; node parameters and CLI flags map onto its fields."""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

from dart_ros.postprocess import NMS_MODES, PostprocessParams
from dart_ros.presets import DEFAULT_BACKBONE, LAUNCH_BACKBONES, get_preset

PRECISIONS = ("fp32", "bf16", "fp16")
PROMPT_MODES = ("official", "text_only")


@dataclasses.dataclass
class DetectorConfig:
    """Every tunable of :class:`dart_ros.detector.Detector`.

    Model
        backbone: preset name (``dart_ros.presets.PRESETS``), e.g. ``vit_h``, ``repvit_m2_3``.
        image_size: network input side S (multiple of 14); 0 = the architecture's default (1008).
        sam3_checkpoint: path of ``sam3.pt``; empty = random weights (said loudly).
        backbone_checkpoint: DART student or pruned checkpoint.
        timm_weights: local ImageNet weights for a student's timm network (never downloaded).
        skip_blocks / mask_blocks: ViT pruning overrides (DART formats).
        load_text_encoder: False = serve the vocabulary from ``text_cache`` only.
        seed: random-weight seed.
    Runtime
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1`` …
        precision: ``fp32``, ``bf16`` or ``fp16`` (reduced precision only on CUDA: autocast in the eager
            runtime, weights and activations in that dtype in the fast one).
        allow_tf32: let fp32 matmuls use TF32 on Ampere+ (off: fp32 means fp32).
        max_classes_per_chunk: classes per encoder-decoder batch. Memory grows with it (the fast
            path holds every decoder layer's image keys and values per class of a chunk).
        runtime: ``auto`` (``fast`` on CUDA, ``eager`` elsewhere), ``eager`` (sam3 modules as
            they are) or ``fast`` (CUDA: fused ViT and encoder-decoder in the chosen precision,
            CUDA graphs for the backbone and per class-count bucket for the encoder-decoder;
            docs/detector.md).
        cuda_graphs: capture CUDA graphs in the fast runtime (off: same code, eager launches).
        compile_kernels: fast runtime on CUDA: ``torch.compile`` the small fixed-shape pieces: the
            ViT's RoPE into one Triton kernel, a student backbone's element-wise work around its
            convolutions (15-25 s once at start-up; off, or without Triton: eager, same numbers).
        compile_encdec: fast runtime on CUDA: ``torch.compile`` the encoder and decoder loops
            (fused residual adds, LayerNorms, casts; docs/benchmarks.md shows the gain) at the price
            of minutes of compiling at the first start (less with inductor's on-disk cache).
        tune_gemms: fast runtime on CUDA in reduced precision, with nvmath-python installed: time
            cuBLASLt's candidate algorithms for the ViT's block GEMMs once at start-up and run the
            fastest inside the backbone's CUDA graph (without nvmath-python: torch's pick, said in
            the log).
        cache_dir: folder where compiled kernels persist between starts (torch.compile's inductor
            cache and Triton's kernel cache go to ``<cache_dir>/inductor`` and ``<cache_dir>/triton``),
            so a second start skips the compiling; ``auto``: ``$XDG_CACHE_HOME/dart_ros`` (else
            ``~/.cache/dart_ros``); empty: torch's and Triton's own defaults. ``TORCHINDUCTOR_CACHE_DIR``
            or ``TRITON_CACHE_DIR`` set in the environment win.
    Vocabulary
        classes: initial vocabulary.
        max_classes: largest vocabulary accepted.
        max_class_name_chars: longest class name accepted.
        text_cache: optional file of cached text features (keyed by model identity).
    Detection
        prompt_mode: ``official`` (text + image-conditioned geometry token, as SAM3's processor)
            or ``text_only`` (as the DART reference).
        confidence_threshold, nms_iou, nms_mode, nms_groups, max_detections, clip_boxes:
            see :class:`dart_ros.postprocess.PostprocessParams`.
        letterbox: keep the aspect ratio (pad) instead of SAM3's stretch to S×S.
    """

    backbone: str = DEFAULT_BACKBONE
    image_size: int = 0
    sam3_checkpoint: str = ""
    backbone_checkpoint: str = ""
    timm_weights: str = ""
    skip_blocks: Optional[Tuple[int, ...]] = None
    mask_blocks: str = ""
    load_text_encoder: bool = True
    seed: int = 0

    device: str = "auto"
    precision: str = "fp32"
    allow_tf32: bool = False
    max_classes_per_chunk: int = 16
    runtime: str = "auto"
    cuda_graphs: bool = True
    compile_kernels: bool = True
    compile_encdec: bool = False
    tune_gemms: bool = True
    cache_dir: str = "auto"

    classes: List[str] = dataclasses.field(default_factory=list)
    class_thresholds: List[float] = dataclasses.field(default_factory=list)
    max_classes: int = 1000
    max_class_name_chars: int = 200
    text_cache: str = ""

    prompt_mode: str = "official"
    confidence_threshold: float = 0.3
    nms_iou: float = 0.7
    nms_mode: str = "per_class"
    nms_groups: Tuple[Tuple[int, ...], ...] = ()
    max_detections: int = 100
    clip_boxes: bool = True
    letterbox: bool = False

    def validate(self) -> "DetectorConfig":
        """Raise ValueError naming the first invalid field; returns self."""

        get_preset(self.backbone)
        if self.image_size and (self.image_size < 14 or self.image_size % 14):
            raise ValueError(f"image_size must be a positive multiple of 14, got {self.image_size}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        from dart_ros.runtime.registry import runtime_names

        if self.runtime not in runtime_names():
            raise ValueError(f"runtime must be one of {runtime_names()}, got {self.runtime!r}")
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt_mode must be one of {PROMPT_MODES}, got {self.prompt_mode!r}")
        if self.nms_mode not in NMS_MODES:
            raise ValueError(f"nms_mode must be one of {NMS_MODES}, got {self.nms_mode!r}")
        check_threshold("confidence_threshold", self.confidence_threshold)
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1] (1 disables NMS), got {self.nms_iou}")
        if self.max_detections < 0:
            raise ValueError(f"max_detections must be >= 0 (0 = unlimited), got {self.max_detections}")
        if self.max_classes_per_chunk < 1:
            raise ValueError(f"max_classes_per_chunk must be >= 1, got {self.max_classes_per_chunk}")
        for t in self.class_thresholds:
            check_threshold("class_thresholds", t)
        if self.max_classes < 1 or self.max_class_name_chars < 1:
            raise ValueError("max_classes and max_class_name_chars must be >= 1")
        return self

    def postprocess_params(self) -> PostprocessParams:
        return PostprocessParams(
            confidence_threshold=self.confidence_threshold,
            nms_iou=self.nms_iou,
            nms_mode=self.nms_mode,
            nms_groups=tuple(tuple(g) for g in self.nms_groups),
            max_detections=self.max_detections,
            clip_boxes=self.clip_boxes,
        )


def resolve_cache_dir(value: str) -> str:
    """``cache_dir`` as a folder ("" when off): ``auto`` is ``$XDG_CACHE_HOME/dart_ros``, else
    ``~/.cache/dart_ros``."""
    import os

    if value == "auto":
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "dart_ros")
    return os.path.expanduser(value) if value else ""


def check_threshold(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


# One line per field: the node's parameter descriptions and the CLIs' flag help.
FIELD_HELP = {
    "backbone": "backbone preset: " + ", ".join(LAUNCH_BACKBONES),
    "image_size": "network input side S in pixels, a multiple of 14 (0 = the model's own, 1008 for SAM3)",
    "sam3_checkpoint": "path of sam3.pt; empty = RANDOM weights",
    "backbone_checkpoint": "path of a DART student or pruned checkpoint",
    "timm_weights": "local ImageNet weights of a student's timm network (never downloaded)",
    "skip_blocks": "ViT blocks to skip (empty = the preset's)",
    "mask_blocks": "ViT sub-blocks to mask, DART's format: 'block:attn|mlp,…'",
    "load_text_encoder": "false = serve class names from text_cache only",
    "seed": "seed of the random weights",
    "device": "auto (CUDA if available), cpu, cuda, cuda:1 …",
    "precision": "one of " + ", ".join(PRECISIONS) + " (reduced precision on CUDA only)",
    "allow_tf32": "let fp32 matmuls use TF32 on Ampere and later",
    "max_classes_per_chunk": "most classes per encoder-decoder batch (memory grows with it)",
    "runtime": "auto (fast on CUDA, else eager), eager or fast",
    "cuda_graphs": "fast runtime: replay CUDA graphs (false: same kernels launched eagerly)",
    "compile_kernels": "fast runtime: torch.compile the backbone's small element-wise work",
    "compile_encdec": "fast runtime: torch.compile the encoder and decoder loops (minutes at first start)",
    "tune_gemms": "fast runtime: time cuBLASLt algorithms for the ViT's GEMMs at start-up (needs nvmath-python)",
    "cache_dir": "folder keeping compiled kernels between starts (auto: ~/.cache/dart_ros; empty: torch's defaults)",
    "classes": "vocabulary: class names, each its own text prompt, or name=prompt|prompt|... for a class "
    "described by several prompts (merged, best score kept); also changed by the set_classes service",
    "class_thresholds": "a confidence threshold per class of 'classes', in [0, 1) (empty = "
    "confidence_threshold for every class)",
    "max_classes": "largest vocabulary accepted",
    "max_class_name_chars": "longest class name accepted, in characters",
    "text_cache": "file of cached text features (keyed by the text encoder's weights)",
    "prompt_mode": "official (text + image geometry token, as SAM3's processor) or text_only",
    "confidence_threshold": "keep detections with score > this, in [0, 1)",
    "nms_iou": "NMS IoU threshold in (0, 1]; 1 disables NMS",
    "nms_mode": "one of " + ", ".join(NMS_MODES),
    "nms_groups": "grouped NMS: groups of class names that suppress each other",
    "max_detections": "most detections per image over all classes (0 = unlimited)",
    "clip_boxes": "clip boxes to the image",
    "letterbox": "keep the aspect ratio (pad) instead of SAM3's stretch to S x S",
}

# Fields that may change while the Detector runs (everything else needs a rebuild).
RUNTIME_FIELDS = (
    "confidence_threshold",
    "nms_iou",
    "nms_mode",
    "nms_groups",
    "max_detections",
    "clip_boxes",
    "max_classes_per_chunk",
    "prompt_mode",
    "letterbox",
)


def parse_name_groups(text: str) -> List[List[str]]:
    """``"car,truck;person, rider"`` -> [["car", "truck"], ["person", "rider"]]."""
    groups = []
    for part in (text or "").split(";"):
        names = [" ".join(n.split()) for n in part.split(",") if n.strip()]
        if names:
            groups.append(names)
    return groups


def parse_class_spec(spec: str) -> Tuple[str, List[str]]:
    """``"person=person|pedestrian|worker"`` -> ("person", ["person", "pedestrian", "worker"]): an
    output class described by several prompts; ``"car"`` -> ("car", ["car"]). Whitespace is
    normalised; empty prompts are dropped."""
    name, sep, rest = spec.partition("=")
    name = " ".join(name.split())
    prompts = [" ".join(p.split()) for p in rest.split("|") if p.strip()] if sep else [name]
    return name, prompts


def format_class_spec(name: str, prompts: Sequence[str]) -> str:
    return name if list(prompts) == [name] else f"{name}={'|'.join(prompts)}"
