"""Export the backbone and the encoder-decoder to ONNX and check them against torch (onnxruntime).

    python offline/export_onnx.py --backbone vit_h --sam3-checkpoint sam3.pt --out-dir engines/vit_h_1008
    python offline/export_onnx.py --backbone repvit_m2_3 --sam3-checkpoint sam3.pt \
        --backbone-checkpoint repvit_m2_3_distilled.pt --image-size 644 --prompt-mode text_only \
        --classes person forklift pallet

Writes backbone.onnx, encdec_<mode>.onnx (dynamic class axis, presence kept), with --classes the
text inputs of that vocabulary (prompts.npz: the pair then runs without torch), manifest.json (I/O
names and shapes, pre- and post-processing, weights identity, parity report) and config.json.
TensorRT engines are built from these files with trtexec or the TensorRT builder where TensorRT is
installed.
"""

import argparse
import json
import os
import sys

from dart_ros.cliutil import add_debug_flag, cli_main
from dart_ros.config import FIELD_HELP, PROMPT_MODES, DetectorConfig
from dart_ros.model.registry import build_model
from dart_ros.presets import DEFAULT_BACKBONE, list_backbones
from dart_ros.runtime.onnx_export import (
    DEFAULT_OPSET,
    OnnxRuntimeStages,
    export,
    parity,
    write_manifest,
    write_prompts,
)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=list_backbones(), help=FIELD_HELP["backbone"])
    ap.add_argument("--image-size", type=int, default=0, help=FIELD_HELP["image_size"])
    ap.add_argument("--sam3-checkpoint", default="", help=FIELD_HELP["sam3_checkpoint"])
    ap.add_argument("--backbone-checkpoint", default="", help=FIELD_HELP["backbone_checkpoint"])
    ap.add_argument(
        "--prompt-mode", default=DetectorConfig.prompt_mode, choices=PROMPT_MODES, help=FIELD_HELP["prompt_mode"]
    )
    ap.add_argument("--classes", nargs="*", default=[], help="write prompts.npz: the text inputs of these class names")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version of the graphs")
    ap.add_argument("--out-dir", default="artifacts/onnx", help="folder for the graphs, manifest.json, config.json")
    ap.add_argument(
        "--check", default="true", choices=("true", "false"), help="true: compare onnxruntime with torch (parity)"
    )
    add_debug_flag(ap)
    return ap.parse_args(argv)


def body(argv=None) -> int:
    args = parse_args(argv)
    model = build_model(
        args.backbone,
        image_size=args.image_size or None,
        sam3_checkpoint=args.sam3_checkpoint or None,
        backbone_checkpoint=args.backbone_checkpoint or None,
    )
    files = export(model, args.out_dir, args.prompt_mode, args.opset)
    if args.classes:
        files["prompts"] = write_prompts(os.path.join(args.out_dir, "prompts.npz"), model, args.classes)
    report = None
    if args.check == "true":
        report = parity(model, OnnxRuntimeStages(files["backbone"], files["encdec"]), args.prompt_mode)
        worst = min(v["cosine"] for v in report.values())
        print(json.dumps(report, indent=1))
        print(f"worst cosine vs torch: {worst:.6f}")
    manifest = write_manifest(
        os.path.join(args.out_dir, "manifest.json"), model, args.prompt_mode, args.opset, files, report
    )
    with open(os.path.join(args.out_dir, "config.json"), "w") as f:
        json.dump({k: v for k, v in vars(args).items() if k != "debug"}, f, indent=1)
    print(f"wrote {', '.join(manifest['files'].values())}, manifest.json and config.json to {args.out_dir}")
    return 0


def main(argv=None) -> int:
    return cli_main(body, argv)


if __name__ == "__main__":
    sys.exit(main())
