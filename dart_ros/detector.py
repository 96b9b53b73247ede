"""The Detector: open-vocabulary multi-class detection with SAM3 and the DART method.

    det = Detector(DetectorConfig(backbone="vit_h", sam3_checkpoint="sam3.pt"))
    det.set_classes(["person", "forklift"])      # encodes the text once, cached
    dets = det.detect(frame_rgb)                  # every frame: one backbone pass, N classes batched

One backbone pass per image is shared by all classes; all classes go through the encoder-decoder
stacked on the batch axis (in chunks); scores are σ(logit)·σ(presence). The object knows nothing
about ROS; the node and every offline tool use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from typing import Dict, Generator, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from dart_ros.config import RUNTIME_FIELDS, DetectorConfig
from dart_ros.model import encdec
from dart_ros.model.registry import DartModel, build_model
from dart_ros.postprocess import postprocess
from dart_ros.preprocess import ResizeInfo, preprocess
from dart_ros.runtime.encdec import run_steps
from dart_ros.text_cache import TextCache
from dart_ros.types import Detections

log = logging.getLogger(__name__)

Image = Union[np.ndarray, torch.Tensor]

# Above this many candidates (scores over the threshold) NMS runs on the GPU, below it on the CPU.
# torchvision's CPU NMS is quadratic: boxes of one class, 0.24 ms for 256, 3.6 ms for 1,024 (a
# 2-core VM).
HOST_NMS_MAX_CANDIDATES = 512


class InvalidClassesError(ValueError):
    """A requested vocabulary was rejected; the previous vocabulary stays active."""


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """An immutable, device-resident vocabulary. Swapped as a whole, never edited.

    Attributes:
        names: class names; index = class id.
        version: increases by one with every accepted change.
        text: (T, N, C) seq-first text features; mask: (N, T) bool, True = padding.
    """

    names: Tuple[str, ...]
    version: int
    text: torch.Tensor
    mask: torch.Tensor
    prompt_cache: Optional[object] = None  # fast runtime: the text's projections (runtime.fused_encdec.PromptCache)


def resolve_device(spec: str) -> torch.device:
    if spec in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but CUDA is not available")
    return dev


class Detector:
    """Owns the model, the active vocabulary and the per-size constants.

    Thread-safety: ``set_classes`` may run concurrently with ``detect``; a frame uses the
    vocabulary that was active when it started. Two ``detect`` calls must not run concurrently.
    """

    def __init__(self, config: DetectorConfig, model: Optional[DartModel] = None):
        self.config = config.validate()
        self.device = resolve_device(config.device)
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
                device=str(self.device),  # random init of ViT-H: ~15 s on a CPU, < 1 s on a GPU
            )
        self.model = model.to(self.device).eval()
        # sam3 switches TF32 on when first imported (during the build above); fp32 here means what
        # the config says.
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = config.allow_tf32
            torch.backends.cudnn.allow_tf32 = config.allow_tf32
        self.random_weights = not config.sam3_checkpoint
        self._autocast_dtype = self._resolve_precision(config.precision)
        self.text_cache = TextCache(model.text_identity, config.text_cache)
        self._tokenizer = None
        self._pos = self._position_encoding()
        self._pos_cast: Dict[torch.dtype, torch.Tensor] = {}
        self._vocab: Optional[Vocabulary] = None
        self._vocab_lock = threading.Lock()
        self._post = config.postprocess_params()
        self._fast = self._resolve_runtime(config.runtime)
        self._bb = None
        self._ed = None
        self._ed_module = None
        self._pipeline = None
        if self._fast:
            self._setup_fast_runtime()
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
    def vocabulary(self) -> Optional[Vocabulary]:
        return self._vocab

    @property
    def vocabulary_version(self) -> int:
        v = self._vocab
        return v.version if v else 0

    def describe(self) -> Dict[str, str]:
        """Human-readable facts for logs and diagnostics."""
        return {
            "backbone": self.model.preset.name,
            "image_size": str(self.image_size),
            "device": str(self.device),
            "precision": self.config.precision if self._autocast_dtype or self.config.precision == "fp32" else "fp32",
            "weights": "random" if self.random_weights else "checkpoint",
            "prompt_mode": self.config.prompt_mode,
            "runtime": "fast" if self._fast else "eager",
        }

    def close(self) -> None:
        """Release the model and every device buffer (graphs, pipeline); the object is unusable after."""
        self._pipeline = None
        self._bb = None
        self._ed = None
        self._ed_module = None
        self._vocab = None
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ configuration

    def _resolve_precision(self, precision: str) -> Optional[torch.dtype]:
        if precision == "fp32":
            return None
        if self.device.type != "cuda":
            log.warning("precision %s requested on %s: running fp32 (reduced precision is CUDA-only)", precision, self.device)
            return None
        return torch.bfloat16 if precision == "bf16" else torch.float16

    def _resolve_runtime(self, runtime: str) -> bool:
        if runtime == "fast" and self.device.type != "cuda":
            raise ValueError("runtime 'fast' needs a CUDA device")
        return runtime == "fast" or (runtime == "auto" and self.device.type == "cuda")

    def _setup_fast_runtime(self) -> None:
        from dart_ros.runtime.backbone import BackboneGraphs, prepare_backbone

        dtype = self._autocast_dtype or torch.float32
        # One fixed input size: let cuDNN time its algorithms once (during the warm-up before graph
        # capture) instead of trusting its heuristics (the ViT's patch conv, a student's convs).
        torch.backends.cudnn.benchmark = True
        vision = prepare_backbone(self.model.vision, self._autocast_dtype, self.model.feature_size,
                                  self.config.compile_kernels, self.config.tune_gemms)
        self._bb = BackboneGraphs(vision, self.image_size, self.device, dtype, slots=2,
                                  use_graphs=self.config.cuda_graphs)
        self._build_encdec_runner()

    def _build_encdec_runner(self) -> None:
        from dart_ros.runtime.encdec import EncDecGraphs, skip_attention_weights
        from dart_ros.runtime.fused_encdec import FusedEncDec

        if self._ed_module is None:
            skip_attention_weights(self.model.sam3.geometry_encoder)
            self._ed_module = FusedEncDec(self.model.sam3, self.model.feature_size, self._pos,
                                          self._autocast_dtype or torch.float32,
                                          compile_stages=self.config.compile_encdec)
        if not self.config.cuda_graphs:
            self._ed = None
            return
        chunk = self.config.max_classes_per_chunk
        buckets = [b for b in (1, 2, 4, 8, 16, 32, 64) if b < chunk] + [chunk]
        self._ed = EncDecGraphs(self._ed_module, buckets)

    def _autocast(self):
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

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
        rebuild = self._fast and candidate.max_classes_per_chunk != self.config.max_classes_per_chunk
        self.config = candidate
        self._post = candidate.postprocess_params()
        if rebuild:
            self._build_encdec_runner()

    def _pos_as(self, dtype: torch.dtype) -> torch.Tensor:
        """The position encoding in ``dtype``, cast once (not per frame)."""
        if self._pos.dtype == dtype:
            return self._pos
        cast = self._pos_cast.get(dtype)
        if cast is None:
            cast = self._pos_cast[dtype] = self._pos.to(dtype)
        return cast

    @torch.inference_mode()
    def _position_encoding(self) -> torch.Tensor:
        p = self.model.feature_size
        probe = torch.zeros(1, self.model.arch.d_model, p, p, device=self.device)
        return encdec.flatten_features(self.model.vision.position_encoding(probe))

    # ------------------------------------------------------------------ vocabulary

    def _token_count(self, name: str) -> int:
        if self._tokenizer is None:
            from sam3.model.tokenizer_ve import SimpleTokenizer

            from dart_ros.model.build import bpe_path

            self._tokenizer = SimpleTokenizer(bpe_path=bpe_path())
        return len(self._tokenizer.encode(name))

    def validate_classes(self, names: Iterable[str]) -> List[str]:
        """Normalise and check a vocabulary; raises :class:`InvalidClassesError` with the reason."""
        if isinstance(names, str):
            raise InvalidClassesError("classes must be a list of names, not a single string")
        names = list(names)
        if not names:
            raise InvalidClassesError("the class list is empty")
        cleaned: List[str] = []
        seen = set()
        dups = []
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
            if name in seen:
                dups.append(name)
                continue
            seen.add(name)
            cleaned.append(name)
        if dups:
            log.warning("dropped duplicate class names: %s", ", ".join(sorted(set(dups))))
        if len(cleaned) > self.config.max_classes:
            raise InvalidClassesError(f"{len(cleaned)} classes requested; the limit is {self.config.max_classes}")
        return cleaned

    @torch.inference_mode()
    def set_classes(self, names: Sequence[str]) -> List[str]:
        """Validate, encode the names not cached yet, and swap the vocabulary atomically.

        Returns the active class list. On any error the previous vocabulary stays active.
        """
        cleaned = self.validate_classes(names)
        missing = self.text_cache.missing(cleaned)
        if missing:
            if not self.model.has_text_encoder:
                raise InvalidClassesError(
                    f"no text encoder loaded and {len(missing)} classes are not in the text cache: "
                    + ", ".join(missing[:5])
                )
            out = self.model.sam3.backbone.forward_text(missing, device=self.device)
            self.text_cache.put(missing, out["language_features"], out["language_mask"])
            if self.config.text_cache:
                self.text_cache.save()
        entries = self.text_cache.get(cleaned)
        text = torch.stack([e[0] for e in entries], dim=1).to(self.device)
        mask = torch.stack([e[1] for e in entries], dim=0).to(self.device)
        cache = self._ed_module.prompt_cache(text, mask) if self._ed_module is not None else None
        if self.device.type == "cuda":
            # The pipeline reads the vocabulary from other streams: the copies must be complete.
            torch.cuda.current_stream(self.device).synchronize()
        with self._vocab_lock:
            version = self.vocabulary_version + 1
            self._vocab = Vocabulary(tuple(cleaned), version, text, mask, cache)
        return list(cleaned)

    # ------------------------------------------------------------------ inference stages

    def preprocess(self, image: Image, color: str = "rgb") -> Tuple[torch.Tensor, ResizeInfo]:
        """HxWxC uint8 -> ((1, 3, S, S) normalised pixels on the device, resize info)."""
        return preprocess(image, self.image_size, self.device, color, self.config.letterbox)

    @torch.inference_mode()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, C, P, P) detection features (one backbone pass for the batch)."""
        self._settle_pipeline()
        if self._fast:  # graphs are captured at batch 1
            return torch.cat([self._bb.run(p[None], 0).clone() for p in pixels])
        with self._autocast():
            return self.model.forward_features(pixels)

    def _backbone(self, pixels: torch.Tensor, slot: int) -> torch.Tensor:
        """Features of one image into buffer ``slot`` (fast runtime: valid until the slot is reused)."""
        if self._fast:
            return self._bb.run(pixels, slot)
        return self.features(pixels)

    def _prompt(self, vocab: Vocabulary, img_feat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.config.prompt_mode == "text_only":
            return vocab.text, vocab.mask
        p = self.model.feature_size
        geo, geo_mask = encdec.geometry_token(self.model.sam3, img_feat, self._pos.to(img_feat.dtype), (p, p))
        n = vocab.text.shape[1]
        prompt = torch.cat([vocab.text.to(geo.dtype), geo.expand(-1, n, -1)], dim=0)
        mask = torch.cat([vocab.mask, geo_mask.expand(n, -1)], dim=1)
        return prompt, mask

    @torch.inference_mode()
    def encode_decode(self, feat: torch.Tensor, vocab: Optional[Vocabulary] = None) -> encdec.EncDecOutput:
        """(1, C, P, P) features of one image -> raw outputs for every class of ``vocab``."""
        self._settle_pipeline()
        return run_steps(self.encode_decode_steps(feat, vocab))

    def _settle_pipeline(self) -> None:
        """Before graphs are replayed outside the pipeline: see :meth:`StreamPipeline.settle`."""
        if self._pipeline is not None:
            self._pipeline.settle()

    @torch.inference_mode()
    def encode_decode_steps(self, feat: torch.Tensor, vocab: Optional[Vocabulary] = None
                            ) -> Generator[None, None, encdec.EncDecOutput]:
        """:meth:`encode_decode` as a generator that yields once, when the encoder's work is queued
        (CUDA graphs; elsewhere after all of it), and returns the outputs when resumed: the
        pipeline queues the encoder of a frame as soon as its backbone is queued, and its decoder
        with the next frame (:func:`dart_ros.runtime.encdec.run_steps` drives one)."""
        vocab = vocab or self._require_vocab()
        p = self.model.feature_size
        if self._fast:
            img_feat = encdec.flatten_features(feat)
            img_pos = self._pos_as(img_feat.dtype)
            official = self.config.prompt_mode == "official"
            cache = vocab.prompt_cache
            if cache is None:  # a Vocabulary built before the fast runtime existed
                cache = self._ed_module.prompt_cache(vocab.text, vocab.mask)
            if self._ed is not None:
                return (yield from self._ed.steps(img_feat, img_pos, cache, official))
            out = encdec.EncDecOutput(*self._ed_module(img_feat, img_pos, cache, official))
        else:
            with self._autocast():
                img_feat = encdec.flatten_features(feat)
                img_pos = self._pos.to(img_feat.dtype)
                prompt, mask = self._prompt(vocab, img_feat)
                chunk = self.config.max_classes_per_chunk
                parts = [
                    encdec.encode_decode(self.model.sam3, img_feat, img_pos, (p, p), prompt[:, s:s + chunk],
                                         mask[s:s + chunk])
                    for s in range(0, prompt.shape[1], chunk)
                ]
            out = encdec.EncDecOutput.cat(parts)
        yield
        return out

    @torch.inference_mode()
    def warm_up(self) -> float:
        """Capture every CUDA graph (both backbone slots, every class-count bucket in the current
        prompt mode) and run every compile now, so that neither the first frame nor the first frame
        after a vocabulary change stalls. Needs no vocabulary. Returns the seconds it took; a no-op
        outside the fast runtime."""
        if not self._fast:
            return 0.0
        t0 = time.perf_counter()
        s = self.image_size
        pixels = torch.zeros(1, 3, s, s, device=self.device)
        feats = [self._backbone(pixels, slot) for slot in (0, 1)]
        arch = self.model.arch
        # Any prompt of the right length captures the same graphs; the values do not matter.
        text = torch.zeros(arch.context_length, 1, arch.d_model, device=self.device)
        mask = torch.zeros(1, arch.context_length, dtype=torch.bool, device=self.device)
        one = self._ed_module.prompt_cache(text, mask)
        buckets = self._ed.buckets if self._ed is not None else (1,)
        for b in buckets:
            self.encode_decode(feats[0], Vocabulary(("",) * b, 0, text, mask, one.empty_like(b)))
        self._sync()
        return time.perf_counter() - t0

    def _require_vocab(self) -> Vocabulary:
        v = self._vocab
        if v is None:
            raise RuntimeError("no classes set: call set_classes([...]) before detect()")
        return v

    def _finish(self, raw: encdec.EncDecOutput, info: ResizeInfo, vocab: Vocabulary) -> Detections:
        """Raw outputs -> Detections. On CUDA: one copy to the host and one wait (for the current
        stream only), then thresholding, NMS and top-k on the CPU, unless more than
        :data:`HOST_NMS_MAX_CANDIDATES` scores pass the threshold. The N×Q scores and boxes are a
        few hundred kilobytes even at 80 classes; on the GPU the same steps are ~20 small kernels
        and several synchronisations, each queued behind whatever else the GPU runs (in the
        pipeline: the next frame's backbone). NMS over thousands of candidates (a low threshold
        over many classes) is quadratic and belongs on the GPU."""
        scores, boxes = raw.scores(), raw.boxes.float()
        if scores.is_cuda:
            host_scores, host_boxes = scores.to("cpu", non_blocking=True), boxes.to("cpu", non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
            candidates = int((host_scores > self._post.confidence_threshold).sum())
            if candidates <= HOST_NMS_MAX_CANDIDATES or self._post.nms_iou >= 1.0:
                scores, boxes = host_scores, host_boxes
        boxes, scores, ids = postprocess(scores, boxes, (info.scale_x, info.scale_y), info.source_hw, self._post)
        boxes, scores, ids = boxes.cpu(), scores.cpu(), ids.cpu()
        return Detections(
            boxes=boxes.numpy().astype(np.float32),
            scores=scores.numpy().astype(np.float32),
            class_ids=ids.numpy().astype(np.int64),
            class_names=list(vocab.names),
            image_size=info.source_hw,
        )

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ public inference

    @torch.inference_mode()
    def submit(self, image: Image, color: str = "rgb", meta=None) -> List[Detections]:
        """Streaming API: hand in a frame, get back the results that are ready, in order.

        On CUDA with the fast runtime, frame t's encoder-decoder runs while frame t+1's backbone
        runs on a second stream, so a call returns the *previous* frame's result (one frame of
        latency, about twice the throughput when the stages are balanced). Elsewhere the frame is
        processed at once. ``meta`` (e.g. a ROS header) comes back on ``Detections.meta``.
        Call :meth:`flush` when no frame follows.
        """
        if self._fast:
            if self._pipeline is None:
                from dart_ros.runtime.pipeline import StreamPipeline

                self._pipeline = StreamPipeline(self)
            return self._pipeline.submit(image, color, meta)
        result = self.detect(image, color)
        result.meta = meta
        return [result]

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
    def detect_batch(self, images: Sequence[Image], color: str = "rgb") -> List[Detections]:
        """Detect in several images; one batched backbone pass, then N classes per image."""
        vocab = self._require_vocab()
        if not len(images):
            return []
        t0 = time.perf_counter()
        pre = [self.preprocess(im, color) for im in images]
        pixels = torch.cat([p[0] for p in pre])
        self._sync()
        t1 = time.perf_counter()
        feats = self.features(pixels)
        self._sync()
        t2 = time.perf_counter()
        raws = [self.encode_decode(feats[i:i + 1], vocab) for i in range(len(images))]
        self._sync()
        t3 = time.perf_counter()
        results = [self._finish(raw, p[1], vocab) for raw, p in zip(raws, pre)]
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
