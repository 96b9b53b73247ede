"""ONNX export of the two DART stages, onnxruntime runners, and parity checks against torch.

Two graphs, as the split-engine design wants (DART_METHOD.md §3):

* backbone: ``pixels`` (1, 3, S, S) float32 normalised -> ``features`` (1, C, P, P). Real-valued
  RoPE (no complex ops), only the stride-14 level.
* enc-dec: ``img_feat`` (1, C, P, P), ``text`` (T, N, C), ``text_mask`` (N, T) bool (True =
  padding) -> ``logits`` (N, Q), ``boxes`` (N, Q, 4) normalised cxcywh, ``presence`` (N,) logits.
  N is a dynamic axis: one graph for any vocabulary size; the image is a batch-1 input broadcast
  inside; the image tokens' position encoding (constant for the input size) is a constant of the
  graph; presence is always kept; in ``official`` prompt mode the image-conditioned geometry token
  is computed inside the graph. ``text`` is SAM3's text encoder output for the class names.

The I/O names below are the single definition used by the exporter, the runners and any engine
builder. TensorRT engines are built from these files where TensorRT exists (not on the machines
this project is developed on); here the graphs are verified with onnxruntime.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

from dart_ros.model import encdec
from dart_ros.model.encdec import EncDecOutput
from dart_ros.model.registry import DartModel
from dart_ros.model.rope_attention import use_real_rope
from dart_ros.runtime.encdec import GraphableEncDec, skip_attention_weights

BACKBONE_INPUTS = ("pixels",)
BACKBONE_OUTPUTS = ("features",)
ENCDEC_INPUTS = ("img_feat", "text", "text_mask")
ENCDEC_OUTPUTS = ("logits", "boxes", "presence")
DEFAULT_OPSET = 17


class BackboneGraph(nn.Module):
    def __init__(self, vision: nn.Module):
        super().__init__()
        self.vision = vision

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision.forward_detection(pixels)


class EncDecGraph(nn.Module):
    def __init__(self, model: DartModel, prompt_mode: str):
        super().__init__()
        self.core = GraphableEncDec(model.sam3, model.feature_size)
        self.geometry = prompt_mode == "official"
        self.register_buffer("img_pos", model.position_encoding(torch.device("cpu")), persistent=False)

    def forward(self, img_feat, text, text_mask):
        logits, boxes, presence = self.core(
            encdec.flatten_features(img_feat), self.img_pos, text, text_mask, self.geometry
        )
        return logits, boxes, presence


def prepare_for_export(model: DartModel) -> DartModel:
    """In place: the export-friendly module variants (identical outputs)."""
    trunk = getattr(model.vision, "trunk", None)
    if trunk is not None:
        use_real_rope(trunk)
    skip_attention_weights(model.sam3.transformer)
    skip_attention_weights(model.sam3.geometry_encoder)
    return model.eval()


def example_inputs(model: DartModel, classes: int = 2, seed: int = 0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s, p, c, t = model.image_size, model.feature_size, model.arch.d_model, model.arch.context_length
    mask = torch.zeros(classes, t, dtype=torch.bool)
    for i in range(classes):
        mask[i, 2 + (i % (t - 3)) :] = True  # different prompt lengths per class
    return {
        "pixels": torch.randn(1, 3, s, s, generator=g).clamp(-1, 1),
        "img_feat": torch.randn(1, c, p, p, generator=g),
        "text": torch.randn(t, classes, c, generator=g),
        "text_mask": mask,
    }


@torch.no_grad()
def export(model: DartModel, out_dir: str, prompt_mode: str = "official", opset: int = DEFAULT_OPSET) -> Dict[str, str]:
    """Write backbone.onnx and encdec.onnx (CPU, fp32); returns their paths."""
    import warnings

    os.makedirs(out_dir, exist_ok=True)
    model = prepare_for_export(model.cpu())
    x = example_inputs(model)
    paths = {
        "backbone": os.path.join(out_dir, "backbone.onnx"),
        "encdec": os.path.join(out_dir, f"encdec_{prompt_mode}.onnx"),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape arithmetic
        torch.onnx.export(
            BackboneGraph(model.vision).eval(),
            (x["pixels"],),
            paths["backbone"],
            input_names=list(BACKBONE_INPUTS),
            output_names=list(BACKBONE_OUTPUTS),
            opset_version=opset,
            dynamo=False,
        )
        n_axis = {
            "text": {1: "classes"},
            "text_mask": {0: "classes"},
            "logits": {0: "classes"},
            "boxes": {0: "classes"},
            "presence": {0: "classes"},
        }
        torch.onnx.export(
            EncDecGraph(model, prompt_mode).eval(),
            tuple(x[k] for k in ENCDEC_INPUTS),
            paths["encdec"],
            input_names=list(ENCDEC_INPUTS),
            output_names=list(ENCDEC_OUTPUTS),
            opset_version=opset,
            dynamo=False,
            dynamic_axes=n_axis,
        )
    import onnx

    for p in paths.values():
        onnx.checker.check_model(p)
    return paths


class OnnxRuntimeStages:
    """onnxruntime sessions of the two graphs with the torch stages' contract."""

    def __init__(self, backbone_path: str, encdec_path: str, providers=("CPUExecutionProvider",)):
        import onnxruntime as ort

        self.backbone = ort.InferenceSession(backbone_path, providers=list(providers))
        self.encdec = ort.InferenceSession(encdec_path, providers=list(providers))

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        (out,) = self.backbone.run(list(BACKBONE_OUTPUTS), {"pixels": pixels.cpu().numpy().astype(np.float32)})
        return torch.from_numpy(out)

    def encode_decode(self, img_feat, text, text_mask) -> EncDecOutput:
        feeds = {"img_feat": img_feat, "text": text, "text_mask": text_mask}
        feeds = {k: v.cpu().numpy() for k, v in feeds.items()}
        logits, boxes, presence = self.encdec.run(list(ENCDEC_OUTPUTS), feeds)
        return EncDecOutput(torch.from_numpy(logits), torch.from_numpy(boxes), torch.from_numpy(presence))


def compare(a: torch.Tensor, b: torch.Tensor) -> Dict[str, float]:
    a, b = a.float().flatten(), b.float().flatten()
    cos = float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12))
    return {"max_abs": float((a - b).abs().max()), "cosine": cos}


@torch.no_grad()
def parity(model: DartModel, stages: OnnxRuntimeStages, prompt_mode: str, class_counts=(1, 3, 7)) -> dict:
    """torch (export variants, fp32 CPU) vs onnxruntime on the same inputs, per output."""
    model = prepare_for_export(model.cpu())
    ref = EncDecGraph(model, prompt_mode).eval()
    out: Dict[str, dict] = {}
    x = example_inputs(model)
    out["features"] = compare(stages.features(x["pixels"]), model.vision.forward_detection(x["pixels"]))
    for n in class_counts:
        x = example_inputs(model, classes=n, seed=n)
        args = tuple(x[k] for k in ENCDEC_INPUTS)
        got = stages.encode_decode(*args)
        want = ref(*args)
        for name, g, w in zip(ENCDEC_OUTPUTS, (got.logits, got.boxes, got.presence_logits), want, strict=True):
            out[f"{name}_{n}cls"] = compare(g, w)
    return out


def write_prompts(path: str, model: DartModel, names) -> str:
    """The text inputs of the enc-dec graph for a vocabulary, as ``.npz`` (``text`` (T, N, C) float32,
    ``text_mask`` (N, T) bool, ``names``): with it the two graphs run without the text encoder."""
    text, mask = model.encode_text(names, torch.device("cpu"))
    np.savez(path, text=text.float().cpu().numpy(), text_mask=mask.cpu().numpy(), names=np.array(list(names)))
    return path


def write_manifest(
    path: str, model: DartModel, prompt_mode: str, opset: int, files: Dict[str, str], parity_report: Optional[dict]
) -> dict:
    """Everything needed to use (or rebuild engines from) the graphs, next to them."""
    manifest = {
        "format": "dart_ros.onnx/1",
        "backbone": model.preset.name,
        "image_size": model.image_size,
        "feature_size": model.feature_size,
        "d_model": model.arch.d_model,
        "queries": model.arch.num_queries,
        "text_tokens": model.arch.context_length,
        "prompt_mode": prompt_mode,
        "presence": True,
        "opset": opset,
        "weights": model.weights_identity,
        "torch": torch.__version__,
        "files": {k: os.path.basename(v) for k, v in files.items()},
        "inputs": {"backbone": list(BACKBONE_INPUTS), "encdec": list(ENCDEC_INPUTS)},
        "outputs": {"backbone": list(BACKBONE_OUTPUTS), "encdec": list(ENCDEC_OUTPUTS)},
        "preprocessing": {
            "layout": "RGB, (1, 3, S, S) float32, S = image_size",
            "resize": "stretch to S x S (aspect ratio not kept), antialiased bilinear",
            "normalise": "(pixel / 255 - 0.5) / 0.5",
        },
        "postprocessing": {
            "score": "sigmoid(logits[n, q]) * sigmoid(presence[n]) for class n, query q",
            "boxes": "normalised cx, cy, w, h of the S x S input: x1 = (cx - w/2) * source width, "
            "y1 = (cy - h/2) * source height (the resize is a stretch), likewise x2, y2; then clipped to "
            "the image",
            "keep": "score >= a threshold (the node's default 0.3); per-class NMS at IoU 0.7 as an option",
        },
        "text_inputs": (
            {"file": os.path.basename(files["prompts"]), "keys": ["text", "text_mask", "names"]}
            if "prompts" in files
            else "SAM3's text encoder output for the class names (export with --classes to write them)"
        ),
        "parity_vs_torch": parity_report,
    }
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest
