"""Export the backbone and the encoder-decoder to ONNX and check them against torch (onnxruntime).

    python offline/export_onnx.py --backbone vit_h --sam3-checkpoint sam3.pt --out-dir engines/vit_h_1008
    python offline/export_onnx.py --backbone repvit_m2_3 --sam3-checkpoint sam3.pt \
        --backbone-checkpoint repvit_m2_3_distilled.pt --image-size 644 --prompt-mode text_only

Writes backbone.onnx, encdec_<mode>.onnx (dynamic class axis, presence kept) and manifest.json
(shapes, I/O names, preprocessing, weights identity, parity report). TensorRT engines are built
from these files with trtexec or the TensorRT builder where TensorRT is installed.
"""

import argparse
import json
import os
import sys

from dart_ros.config import FIELD_HELP, PROMPT_MODES, DetectorConfig
from dart_ros.model.registry import build_model
from dart_ros.presets import DEFAULT_BACKBONE, list_backbones
from dart_ros.runtime.onnx_export import DEFAULT_OPSET, OnnxRuntimeStages, export, parity, write_manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=list_backbones(), help="backbone preset")
    ap.add_argument("--image-size", type=int, default=0)
    ap.add_argument("--sam3-checkpoint", default="")
    ap.add_argument("--backbone-checkpoint", default="")
    ap.add_argument(
        "--prompt-mode", default=DetectorConfig.prompt_mode, choices=PROMPT_MODES, help=FIELD_HELP["prompt_mode"]
    )
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    ap.add_argument("--out-dir", default="artifacts/onnx")
    ap.add_argument("--check", default="true", choices=("true", "false"), help="onnxruntime parity vs torch")
    args = ap.parse_args(argv)
    model = build_model(
        args.backbone,
        image_size=args.image_size or None,
        sam3_checkpoint=args.sam3_checkpoint or None,
        backbone_checkpoint=args.backbone_checkpoint or None,
    )
    files = export(model, args.out_dir, args.prompt_mode, args.opset)
    report = None
    if args.check == "true":
        report = parity(model, OnnxRuntimeStages(files["backbone"], files["encdec"]), args.prompt_mode)
        worst = min(v["cosine"] for v in report.values())
        print(json.dumps(report, indent=1))
        print(f"worst cosine vs torch: {worst:.6f}")
    manifest = write_manifest(
        os.path.join(args.out_dir, "manifest.json"), model, args.prompt_mode, args.opset, files, report
    )
    print(f"wrote {', '.join(manifest['files'].values())} and manifest.json to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
