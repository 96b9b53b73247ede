"""The Detector: open-vocabulary multi-class detection with SAM3 and the DART method.

    det = Detector(DetectorConfig(backbone="vit_h", sam3_checkpoint="sam3.pt"))
    det.set_classes(["person", "forklift"])      # encodes the text once, cached
    dets = det.detect(frame_rgb)                  # every frame: one backbone pass, N classes batched

One backbone pass per image is shared by all classes; all classes go through the encoder-decoder
stacked on the batch axis (in chunks); scores are σ(logit)·σ(presence). The object knows nothing
about ROS; the node and every offline tool use it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from dart_ros.config import RUNTIME_FIELDS, DetectorConfig
from dart_ros.model import encdec
from dart_ros.model.registry import DartModel, build_model
from dart_ros.postprocess import PostprocessParams, to_detections
from dart_ros.preprocess import ResizeInfo, preprocess
from dart_ros.runtime.interface import PreparedPrompt
from dart_ros.runtime.registry import build_runners, resolve_precision
from dart_ros.text_cache import TextCache
from dart_ros.types import Detections, InvalidClassesError

log = logging.getLogger(__name__)

Image = Union[np.ndarray, torch.Tensor]

__all__ = ["Detector", "InvalidClassesError", "Vocabulary", "resolve_device"]


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """An immutable, device-resident vocabulary. Swapped as a whole, never edited.

    Attributes:
        names: output class names; index = class id.
        version: increases by one with every accepted change.
        text: (T, N, C) seq-first text features of the N prompts; mask: (N, T) bool, True = padding.
        prompt: the same, prepared by the encoder-decoder runner (cached projections …).
        prompts: the N text prompts (a class described by several prompts has several rows).
        prompt_classes: the output class of each prompt.
        thresholds: a confidence threshold per output class; empty = the configured global one.
    """

    names: Tuple[str, ...]
    version: int
    text: torch.Tensor
    mask: torch.Tensor
    prompt: PreparedPrompt
    prompts: Tuple[str, ...] = ()
    prompt_classes: Tuple[int, ...] = ()
    thresholds: Tuple[float, ...] = ()

    @property
    def specs(self) -> List[str]:
        """The vocabulary as class specs (``name`` or ``name=prompt|prompt``), as set_classes takes it."""
        from dart_ros.config import format_class_spec

        rows: List[List[str]] = [[] for _ in self.names]
        for p, c in zip(self.prompts, self.prompt_classes, strict=True):
            rows[c].append(p)
        return [format_class_spec(n, r) for n, r in zip(self.names, rows, strict=True)]

    def postprocess_params(self, base: PostprocessParams) -> PostprocessParams:
        """``base`` with this vocabulary's per-class thresholds and prompt merging."""
        merged = list(self.prompt_classes) != list(range(len(self.prompt_classes)))
        if not self.thresholds and not merged:
            return base
        rows = tuple(self.thresholds[c] for c in self.prompt_classes) if self.thresholds else ()
        return dataclasses.replace(base, row_thresholds=rows, row_classes=tuple(self.prompt_classes) if merged else ())


def use_kernel_cache(value: str) -> str:
    """Point torch.compile's and Triton's on-disk caches into ``cache_dir`` (before anything
    compiles), unless the environment already names them; returns the folder ("" when off)."""
    import os

    from dart_ros.config import resolve_cache_dir

    folder = resolve_cache_dir(value)
    if folder:
        for var, sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
            os.environ.setdefault(var, os.path.join(folder, sub))
    return folder


def resolve_device(spec: str) -> torch.device:
    if spec in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but CUDA is not available")
    return dev


class Detector:
    """Owns the model, the stage runners, the active vocabulary and the streaming pipeline.

    Thread-safety: ``set_classes`` may run concurrently with ``detect``; a frame uses the
    vocabulary that was active when it started. Two ``detect`` calls must not run concurrently.
    """

    def __init__(self, config: DetectorConfig, model: Optional[DartModel] = None):
        self.config = config.validate()
        self.device = resolve_device(config.device)
        self.cache_dir = use_kernel_cache(config.cache_dir) if self.device.type == "cuda" else ""
        if model is None:
            model = build_model(
                backbone=config.backbone,
                image_size=config.image_size or None,
                sam3_checkpoint=config.sam3_checkpoint or None,
                backbone_checkpoint=config.backbone_checkpoint or None,
                timm_weights=config.timm_weights or None,
                skip_blocks=config.skip_blocks,
                mask_blocks=config.mask_blocks or None,
                load_text_encoder=config.load_text_encoder,
                seed=config.seed,
                device=str(self.device),  # random init of ViT-H on the device: seconds, not minutes
            )
        self.model = model.to(self.device).eval()
        # sam3 switches TF32 on when first imported (during the build above); fp32 here means what
        # the config says.
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = config.allow_tf32
            torch.backends.cudnn.allow_tf32 = config.allow_tf32
        self.random_weights = not config.sam3_checkpoint
        self.text_cache = TextCache(model.text_identity, config.text_cache)
        self._tokenizer = None
        self._vocab: Optional[Vocabulary] = None
        self._vocab_lock = threading.Lock()
        self._post = config.postprocess_params()
        self.compute_dtype = resolve_precision(config.precision, self.device)  # None: fp32
        self.runners = build_runners(self.model, config, self.device, self.compute_dtype)
        self._pipeline = None
        if config.classes:
            self.set_classes(config.classes)

    # ------------------------------------------------------------------ properties

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def classes(self) -> List[str]:
        v = self._vocab
        return list(v.names) if v else []

    @property
    def class_specs(self) -> List[str]:
        """The active vocabulary as set_classes takes it (``name`` or ``name=prompt|prompt``)."""
        v = self._vocab
        return v.specs if v else []

    @property
    def class_thresholds(self) -> List[float]:
        """The active per-class thresholds; empty when the global one applies to every class."""
        v = self._vocab
        return list(v.thresholds) if v else []

    @property
    def vocabulary(self) -> Optional[Vocabulary]:
        return self._vocab

    @property
    def vocabulary_version(self) -> int:
        v = self._vocab
        return v.version if v else 0

    @property
    def backbone_runner(self):
        """The backbone stage (:class:`~dart_ros.runtime.interface.BackboneRunner`)."""
        return self.runners.backbone

    @property
    def encdec_runner(self):
        """The encoder-decoder stage (:class:`~dart_ros.runtime.interface.EncDecRunner`)."""
        return self.runners.encdec

    def describe(self) -> Dict[str, str]:
        """Human-readable facts for logs and diagnostics."""
        return {
            "backbone": self.model.preset.name,
            "image_size": str(self.image_size),
            "device": str(self.device),
            "precision": self.config.precision if self.compute_dtype is not None else "fp32",
            "weights": "random" if self.random_weights else "checkpoint",
            "prompt_mode": self.config.prompt_mode,
            "runtime": self.runners.name,
            "kernel_cache": self.cache_dir or "off",
        }

    def close(self) -> None:
        """Release the model and every device buffer (graphs, pipeline); the object is unusable after."""
        self._pipeline = None
        self.runners.close()
        self._vocab = None
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ configuration

    def update(self, **changes) -> None:
        """Change run-time fields (thresholds, NMS, chunking, prompt mode) atomically, validated.

        Raises ValueError (and changes nothing) for an unknown field, a field that needs a rebuild,
        or an invalid value.
        """
        for k in changes:
            if not hasattr(self.config, k):
                raise ValueError(f"unknown Detector setting {k!r}")
            if k not in RUNTIME_FIELDS:
                raise ValueError(f"{k!r} cannot change at run time; valid: {', '.join(RUNTIME_FIELDS)}")
        candidate = dataclasses.replace(self.config, **changes).validate()
        rechunk = candidate.max_classes_per_chunk != self.config.max_classes_per_chunk
        self.config = candidate
        self._post = candidate.postprocess_params()
        if rechunk:
            self._settle()
            self.runners.encdec.set_chunk_size(candidate.max_classes_per_chunk)

    # ------------------------------------------------------------------ vocabulary

    def _token_count(self, name: str) -> int:
        if self._tokenizer is None:
            from sam3.model.tokenizer_ve import SimpleTokenizer

            from dart_ros.model.build import bpe_path

            self._tokenizer = SimpleTokenizer(bpe_path=bpe_path())
        return len(self._tokenizer.encode(name))

    def validate_classes(self, names: Iterable[str]) -> List[str]:
        """Normalise and check a vocabulary of class specs (``name`` or ``name=prompt|prompt|...``);
        returns the specs, normalised. Raises :class:`InvalidClassesError` with the reason."""
        from dart_ros.config import format_class_spec, parse_class_spec

        if isinstance(names, str):
            raise InvalidClassesError("classes must be a list of names, not a single string")
        names = list(names)
        if not names:
            raise InvalidClassesError("the class list is empty")
        if any(not isinstance(n, str) for n in names):
            i = next(i for i, n in enumerate(names) if not isinstance(n, str))
            raise InvalidClassesError(f"class {i} is a {type(names[i]).__name__}, not a string")
        specs = [parse_class_spec(n) for n in names]
        for i, (name, _) in enumerate(specs):
            if not name:
                raise InvalidClassesError(f"class {i} is empty")
        prompts = [p for _, ps in specs for p in ps]
        owner = {}
        for name, ps in specs:
            if "=" in name or "|" in name:
                raise InvalidClassesError(f"class name {name!r} contains '=' or '|' (they separate prompts)")
            if not ps and name:
                raise InvalidClassesError(f"class {name!r} has no prompts after '='")
            for p in ps:
                if owner.setdefault(p, name) != name:
                    raise InvalidClassesError(f"prompt {p!r} belongs to two classes: {owner[p]!r} and {name!r}")
        self._validate_prompts(prompts)
        cleaned, seen, dups = [], set(), []
        for name, ps in specs:
            if name in seen:
                dups.append(name)
                continue
            seen.add(name)
            cleaned.append(format_class_spec(name, ps))
        if dups:
            log.warning("dropped duplicate class names: %s", ", ".join(sorted(set(dups))))
        if len(cleaned) > self.config.max_classes:
            raise InvalidClassesError(f"{len(cleaned)} classes requested; the limit is {self.config.max_classes}")
        n_prompts = sum(len(parse_class_spec(c)[1]) for c in cleaned)
        if n_prompts > self.config.max_classes:  # each prompt costs the enc-dec what a class does
            raise InvalidClassesError(f"{n_prompts} prompts requested; the limit is {self.config.max_classes}")
        return cleaned

    def _validate_prompts(self, names: List[str]) -> None:
        limit_tokens = self.model.arch.context_length - 2  # start and end tokens
        for i, raw in enumerate(names):
            if not isinstance(raw, str):
                raise InvalidClassesError(f"class {i} is a {type(raw).__name__}, not a string")
            name = " ".join(raw.split())
            if not name:
                raise InvalidClassesError(f"class {i} is empty")
            if len(name) > self.config.max_class_name_chars:
                raise InvalidClassesError(
                    f"class {i} has {len(name)} characters; the limit is {self.config.max_class_name_chars}"
                )
            if self._token_count(name) > limit_tokens:
                raise InvalidClassesError(
                    f"class {name[:40]!r} is longer than the text encoder's {limit_tokens} tokens"
                )

    @torch.inference_mode()
    def set_classes(self, names: Sequence[str], thresholds: Optional[Sequence[float]] = None) -> List[str]:
        """Validate, encode the prompts not cached yet, and swap the vocabulary atomically.

        ``names``: class specs: ``"person"`` (the name is the prompt) or
        ``"person=person|pedestrian|worker"`` (an output class described by several prompts; they run
        as classes of their own and merge into it before NMS, so the best-scored box survives).
        ``thresholds``: one confidence threshold per class, replacing the global one for that class
        (empty or None: the global ``confidence_threshold`` for all).
        Returns the active class names. On any error the previous vocabulary stays active.
        """
        from dart_ros.config import check_threshold, parse_class_spec

        specs = self.validate_classes(names)
        parsed = [parse_class_spec(spec) for spec in specs]
        if thresholds:
            thresholds = [float(t) for t in thresholds]
            if len(thresholds) != len(list(names)):
                raise InvalidClassesError(
                    f"{len(thresholds)} thresholds for {len(list(names))} classes: give one per class, or none"
                )
            by_name = {}
            for spec, t in zip(names, thresholds, strict=True):
                try:
                    check_threshold("threshold", t)
                except ValueError as e:
                    raise InvalidClassesError(f"class {parse_class_spec(spec)[0]!r}: {e}") from None
                by_name.setdefault(parse_class_spec(spec)[0], t)
            thresholds = tuple(by_name[name] for name, _ in parsed)
        prompts = [p for _, ps in parsed for p in ps]
        prompt_classes = tuple(i for i, (_, ps) in enumerate(parsed) for _ in ps)
        missing = self.text_cache.missing(prompts)
        if missing:
            if not self.model.has_text_encoder:
                raise InvalidClassesError(
                    f"no text encoder loaded and {len(missing)} classes are not in the text cache: "
                    + ", ".join(missing[:5])
                )
            feats, masks = self.model.encode_text(missing, device=self.device)
            self.text_cache.put(missing, feats, masks)
            if self.config.text_cache:
                self.text_cache.save()
        entries = self.text_cache.get(prompts)
        text = torch.stack([e[0] for e in entries], dim=1).to(self.device)
        mask = torch.stack([e[1] for e in entries], dim=0).to(self.device)
        prompt = self.runners.encdec.prepare(text, mask)
        if self.device.type == "cuda":
            # The pipeline reads the vocabulary from other streams: the copies must be complete.
            torch.cuda.current_stream(self.device).synchronize()
        names_out = tuple(name for name, _ in parsed)
        with self._vocab_lock:
            version = self.vocabulary_version + 1
            self._vocab = Vocabulary(
                names_out, version, text, mask, prompt, tuple(prompts), prompt_classes, tuple(thresholds or ())
            )
        return list(names_out)

    # ------------------------------------------------------------------ inference stages

    def preprocess(self, image: Image, color: str = "rgb") -> Tuple[torch.Tensor, ResizeInfo]:
        """HxWxC uint8 -> ((1, 3, S, S) normalised pixels on the device, resize info)."""
        return preprocess(image, self.image_size, self.device, color, self.config.letterbox)

    @torch.inference_mode()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, C, P, P) detection features in fresh tensors."""
        self._settle()
        return self.runners.backbone.features(pixels)

    @torch.inference_mode()
    def encode_decode(self, feat: torch.Tensor, vocab: Optional[Vocabulary] = None) -> encdec.EncDecOutput:
        """(1, C, P, P) features of one image -> raw outputs for every class of ``vocab`` (default:
        the active vocabulary)."""
        vocab = vocab or self._require_vocab()
        self._settle()
        return self.runners.encdec(feat, vocab.prompt, self.config.prompt_mode == "official")

    def postprocess(self, raw: encdec.EncDecOutput, info: ResizeInfo, vocab: Optional[Vocabulary] = None) -> Detections:
        """Raw outputs of one image -> Detections in source pixels, with the current thresholds."""
        vocab = vocab or self._require_vocab()
        return to_detections(raw, info, vocab.names, vocab.postprocess_params(self._post))

    @torch.inference_mode()
    def warm_up(self, batch_sizes: Sequence[int] = ()) -> float:
        """Capture every CUDA graph (every backbone slot, every class-count bucket in the current
        prompt mode, the backbone's batched pass for each of ``batch_sizes``: :meth:`detect_batch`
        of that many images) and run every compile now, so that neither the first frame nor the
        first frame after a vocabulary change stalls. Needs no vocabulary. Returns the seconds it
        took."""
        t0 = time.perf_counter()
        self._settle()
        feat = self.runners.backbone.warm_up(batch_sizes)
        self.runners.encdec.warm_up(feat, self.config.prompt_mode == "official")
        self._sync()
        return time.perf_counter() - t0

    def _settle(self) -> None:
        """Before the runners are used outside the pipeline: see :meth:`StreamPipeline.settle`."""
        if self._pipeline is not None:
            self._pipeline.settle()

    def _require_vocab(self) -> Vocabulary:
        v = self._vocab
        if v is None:
            raise RuntimeError("no classes set: call set_classes([...]) before detect()")
        return v

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ public inference

    @torch.inference_mode()
    def submit(self, image: Image, color: str = "rgb", meta=None) -> List[Detections]:
        """Streaming API: hand in a frame, get back the results that are ready, in order.

        On CUDA, frame t's encoder-decoder runs while frame t+1's backbone runs on a second
        stream, so a call returns the *previous* frame's result (one frame of latency, about twice
        the throughput when the stages are balanced). Elsewhere the frame is processed at once.
        ``meta`` (e.g. a ROS header) comes back on ``Detections.meta``. Call :meth:`flush` when no
        frame follows.
        """
        vocab = self._require_vocab()
        if self.device.type != "cuda":
            result = self.detect(image, color)
            result.meta = meta
            return [result]
        if self._pipeline is None:
            from dart_ros.runtime.pipeline import StreamPipeline

            self._pipeline = StreamPipeline(
                self.runners.backbone, self.runners.encdec, self.preprocess, self.postprocess, self.device
            )
        return self._pipeline.submit(image, color, meta, vocab, vocab.prompt, self.config.prompt_mode == "official")

    @torch.inference_mode()
    def flush(self) -> List[Detections]:
        """Results of frames still in flight (none outside the CUDA pipeline)."""
        return self._pipeline.flush() if self._pipeline is not None else []

    @torch.inference_mode()
    def detect(self, image: Image, color: str = "rgb") -> Detections:
        """Detect every class of the active vocabulary in one image.

        Args:
            image: HxWx3 (rgb/bgr), HxWx4 (rgba/bgra) or HxW (mono) uint8; numpy or tensor.
            color: channel layout of ``image``.
        Returns:
            :class:`Detections` in source-image pixels, with per-stage ``timings_ms``.
        """
        return self.detect_batch([image], color)[0]

    @torch.inference_mode()
    def detect_batch(self, images: Sequence[Image], color: Union[str, Sequence[str]] = "rgb") -> List[Detections]:
        """Detect in several images (e.g. one frame of each camera): one batched backbone pass,
        then every class of the vocabulary per image. Images may differ in size; ``color`` is one
        layout for all or one per image."""
        vocab = self._require_vocab()
        if not len(images):
            return []
        colors = [color] * len(images) if isinstance(color, str) else list(color)
        if len(colors) != len(images):
            raise ValueError(f"{len(colors)} colour layouts for {len(images)} images")
        t0 = time.perf_counter()
        pre = [self.preprocess(im, c) for im, c in zip(images, colors, strict=True)]
        pixels = torch.cat([p[0] for p in pre])
        self._sync()
        t1 = time.perf_counter()
        feats = self.features(pixels)
        self._sync()
        t2 = time.perf_counter()
        raws = [self.encode_decode(feats[i : i + 1], vocab) for i in range(len(images))]
        self._sync()
        t3 = time.perf_counter()
        results = [self.postprocess(raw, p[1], vocab) for raw, p in zip(raws, pre, strict=True)]
        t4 = time.perf_counter()
        timings = {
            "preprocess": (t1 - t0) * 1e3,
            "backbone": (t2 - t1) * 1e3,
            "encdec": (t3 - t2) * 1e3,
            "postprocess": (t4 - t3) * 1e3,
            "total": (t4 - t0) * 1e3,
        }
        for r in results:
            r.timings_ms = dict(timings)
        return results
