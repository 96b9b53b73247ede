"""``dart-detect``: detect classes in image files from the command line.

    dart-detect photo.jpg --classes "person, dog" --sam3 sam3.pt --out annotated.png
    dart-detect frames/*.jpg --classes person --backbone tiny --json dets.json     # random weights
"""

from __future__ import annotations

import argparse
import json
import sys


def detect_main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+")
    ap.add_argument("--classes", required=True, help="comma-separated vocabulary")
    ap.add_argument("--backbone", default="vit_h")
    ap.add_argument("--sam3", default="", help="sam3.pt (default: random weights)")
    ap.add_argument("--backbone-checkpoint", default="")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--threshold", type=float, default=0.3)
    ap.add_argument("--prompt-mode", default="official", choices=("official", "text_only"))
    ap.add_argument("--out", default="", help="annotated image (single input) or folder")
    ap.add_argument("--json", default="", help="write detections as JSON")
    args = ap.parse_args(argv)

    import os

    import cv2

    from dart_ros.config import DetectorConfig
    from dart_ros.detector import Detector
    from dart_ros.visualize import draw_detections

    det = Detector(DetectorConfig(
        backbone=args.backbone, sam3_checkpoint=args.sam3, backbone_checkpoint=args.backbone_checkpoint,
        device=args.device, precision=args.precision, confidence_threshold=args.threshold,
        prompt_mode=args.prompt_mode,
    ))
    det.set_classes([c.strip() for c in args.classes.split(",") if c.strip()])
    report = []
    for path in args.images:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            print(f"{path}: cannot read image", file=sys.stderr)
            return 2
        d = det.detect(bgr, color="bgr")
        print(f"{path}: {len(d)} detections ({d.timings_ms['total']:.1f} ms)")
        for box, score, label in zip(d.boxes.tolist(), d.scores.tolist(), d.labels):
            print(f"  {label:20s} {score:.3f}  [{', '.join(f'{v:.1f}' for v in box)}]")
        report.append({"image": path, "detections": [
            {"class": label, "score": score, "box_xyxy": box}
            for box, score, label in zip(d.boxes.tolist(), d.scores.tolist(), d.labels)]})
        if args.out:
            out = args.out if len(args.images) == 1 and not os.path.isdir(args.out) else \
                os.path.join(args.out, os.path.basename(path))
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            cv2.imwrite(out, draw_detections(bgr[:, :, ::-1], d)[:, :, ::-1])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(detect_main())
