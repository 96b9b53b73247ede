"""CPU cost of the tracker per frame: N detections of two classes drifting across 1920x1080.

python dev/tracking_cost.py --detections 100 --frames 500
"""

import argparse
import json
import platform
import time

import numpy as np

from dart_ros.tracking import Tracker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detections", type=int, default=100, help="detections per frame")
    ap.add_argument("--frames", type=int, default=500, help="frames measured (after 20 of warm-up)")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    n = args.detections
    start = rng.uniform([0, 0], [1800, 1000], (n, 2))
    velocity = rng.normal(0, 3, (n, 2))
    labels = ["person"] * (n // 2) + ["car"] * (n - n // 2)
    tracker, times = Tracker(), []
    for k in range(args.frames + 20):
        xy = start + velocity * k + rng.normal(0, 1.0, (n, 2))
        boxes = np.c_[xy, xy + 60]
        scores = rng.uniform(0.2, 1.0, n)
        t0 = time.perf_counter()
        tracker.update(boxes, scores, labels)
        times.append(time.perf_counter() - t0)
    ms = np.array(times[20:]) * 1e3
    report = {
        "detections": n,
        "frames": args.frames,
        "ms_p50": round(float(np.median(ms)), 2),
        "ms_p90": round(float(np.percentile(ms, 90)), 2),
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
