"""Does the encoder-decoder's speed depend on its input? Times ``encode_decode`` of two detectors
(different backbones) on each other's features, on zeros and on Gaussian noise.

    python offline/encdec_input_probe.py --backbones vit_h repvit_m2_3 --classes 4 16

Written to check whether the enc-dec timings behind the students differ because of their features
(values change tensor-core power draw and hence clocks) or because of the model (docs/benchmarks.md).
"""

import argparse
import itertools
import json
import time

import numpy as np
import torch

from dart_ros.coco import COCO_CLASSES
from dart_ros.config import DetectorConfig
from dart_ros.detector import Detector


def timed(fn, iters=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["vit_h", "repvit_m2_3"])
    ap.add_argument("--classes", nargs="+", type=int, default=[4, 16])
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    img = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    dets = {b: Detector(DetectorConfig(backbone=b, device="cuda", precision="bf16")) for b in a.backbones}
    feats = {f"{b} features": d.features(d.preprocess(img)[0]) for b, d in dets.items()}
    ref = next(iter(feats.values()))
    feats["zeros"], feats["noise"] = torch.zeros_like(ref), torch.randn_like(ref)
    rows = []
    for n, (b, d) in itertools.product(a.classes, dets.items()):
        d.set_classes(list(COCO_CLASSES[:n]))
        for name, f in feats.items():
            rows.append({"classes": n, "detector": b, "input": name, "encdec_ms": timed(lambda: d.encode_decode(f))})
            print(f"{n:3d} classes  {b:16s} {name:24s} {rows[-1]['encdec_ms']:7.2f} ms", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
