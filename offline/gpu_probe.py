"""Quick eager-PyTorch latency probe of the Detector stages on a GPU (random full-size weights).

    python offline/gpu_probe.py --backbone vit_h --classes 3 4 16
"""

import argparse
import json

import numpy as np
import torch

from dart_ros.config import DetectorConfig
from dart_ros.detector import Detector
from dart_ros.coco import COCO_CLASSES
from dart_ros.reference import reference_outputs
from dart_ros.runtime.timing import cuda_median_ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="vit_h")
    ap.add_argument("--classes", type=int, nargs="+", default=[3, 4, 16])
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    det = Detector(DetectorConfig(backbone=a.backbone, device="cuda", precision=a.precision, confidence_threshold=0.3))
    img = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    px, _ = det.preprocess(img)
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "backbone": a.backbone}
    res["backbone_ms"] = cuda_median_ms(lambda: det.features(px))
    feat = det.features(px)
    for n in a.classes:
        det.set_classes(list(COCO_CLASSES[:n]))
        res[f"encdec_ms_{n}"] = cuda_median_ms(lambda: det.encode_decode(feat))
        res[f"detect_ms_{n}"] = cuda_median_ms(lambda: det.detect(img))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            res[f"naive_ms_{n}"] = cuda_median_ms(lambda: reference_outputs(det.model.sam3, px, list(COCO_CLASSES[:n])), iters=3, warmup=1)
    print(json.dumps(res, indent=1))
    if a.out:
        json.dump(res, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
