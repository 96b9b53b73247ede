"""``dart-detect``: detect classes in image files from the command line.

    dart-detect photo.jpg --classes "person, dog" --sam3-checkpoint sam3.pt --out annotated.png
    dart-detect frames/*.jpg --classes person --backbone tiny --json dets.json     # random weights

Every Detector setting is a flag (``--backbone``, ``--precision``, ``--confidence-threshold`` …),
with the library's defaults.
"""

from __future__ import annotations

import argparse
import json
import sys


def detect_main(argv=None) -> int:
    from dart_ros.cliutil import add_dataclass_flags, dataclass_from_args
    from dart_ros.config import FIELD_HELP, DetectorConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", help="image files (anything OpenCV reads)")
    ap.add_argument("--out", default="", help="annotated image (single input) or folder")
    ap.add_argument("--json", default="", help="write detections as JSON")
    add_dataclass_flags(ap, DetectorConfig, group="detector", doc=FIELD_HELP)
    args = ap.parse_args(argv)

    import os

    import cv2

    from dart_ros.detector import Detector
    from dart_ros.visualize import draw_detections

    # "person, dog" and person dog both name two classes
    classes = [c.strip() for arg in args.classes or [] for c in arg.split(",") if c.strip()]
    if not classes:
        ap.error("--classes is required")
    det = Detector(dataclass_from_args(DetectorConfig, args, classes=classes))
    report = []
    for path in args.images:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            print(f"{path}: cannot read image", file=sys.stderr)
            return 2
        d = det.detect(bgr, color="bgr")
        print(f"{path}: {len(d)} detections ({d.timings_ms['total']:.1f} ms)")
        for box, score, label in zip(d.boxes.tolist(), d.scores.tolist(), d.labels, strict=True):
            print(f"  {label:20s} {score:.3f}  [{', '.join(f'{v:.1f}' for v in box)}]")
        report.append(
            {
                "image": path,
                "detections": [
                    {"class": label, "score": score, "box_xyxy": box}
                    for box, score, label in zip(d.boxes.tolist(), d.scores.tolist(), d.labels, strict=True)
                ],
            }
        )
        if args.out:
            out = (
                args.out
                if len(args.images) == 1 and not os.path.isdir(args.out)
                else os.path.join(args.out, os.path.basename(path))
            )
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            cv2.imwrite(out, draw_detections(bgr[:, :, ::-1], d)[:, :, ::-1])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(detect_main())
