"""Several cameras through one model versus one detector per camera, on one GPU.

    python offline/camera_benchmark.py --backbones vit_h repvit_m2_3 --cameras 1 2 4 --out artifacts/cameras

For each backbone and camera count N, with the same frames (one 1280x720 frame per camera, random
weights, 4 classes):
  shared    one process, one Detector: each step detects the newest frame of every camera with
            ``detect_batch`` (one batched backbone pass, then the encoder-decoder per frame), as the
            node does with ``cameras: [...]``
  separate  N processes with a Detector each, all detecting one frame after another at the same
            time, as N nodes with one camera each would (N = 1 is the same as shared)
Reported: total frames/s over all cameras (frames finished inside one common timed window), the
time of one step (a batch, or one frame in a separate process) p50 / p90, and the GPU memory in use
while the set-up runs (every process's CUDA context included; read with nvidia-smi, minus what was
in use before). Writes <out>.json and <out>.png and prints a table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import time
from typing import Dict, List

import numpy as np

from dart_ros.cliutil import add_debug_flag, cli_main
from dart_ros.config import PRECISIONS
from dart_ros.presets import FULL_SIZE_BACKBONES


def gpu_memory_used_mib() -> float:
    """Memory in use on GPU 0, all processes, from the driver (no CUDA context in this process)."""
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[0])


def _worker(backbone: str, cameras: int, opts: dict, ready, go, stop, results) -> None:
    """One detector process: build, warm up, then detect until told to stop; reports step times."""
    import torch

    from dart_ros.coco import COCO_CLASSES
    from dart_ros.config import DetectorConfig
    from dart_ros.detector import Detector

    try:
        det = Detector(
            DetectorConfig(
                backbone=backbone, device="cuda", precision=opts["precision"], image_size=opts["image_size"],
                classes=list(COCO_CLASSES[: opts["classes"]]), confidence_threshold=0.3,
            )
        )  # fmt: skip
        warm = time.perf_counter()
        det.warm_up(batch_sizes=(cameras,) if cameras > 1 else ())
        warm = time.perf_counter() - warm
        w, h = opts["frame_size"]
        rng = np.random.default_rng(opts["seed"])
        frames = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(cameras)]

        def step():
            return det.detect_batch(frames) if cameras > 1 else [det.detect(frames[0])]

        for _ in range(5):
            step()
        torch.cuda.synchronize()
        ready.put(("ready", os.getpid(), warm))
        go.wait()
        spans = []
        while not stop.is_set():
            t0 = time.monotonic()
            step()  # detect() returns host-side results: the GPU work of the step is done
            spans.append((t0, time.monotonic()))
        results.put(("done", os.getpid(), spans, torch.cuda.max_memory_reserved() / 2**20))
    except Exception as e:  # reported to the parent, which says it in one line
        ready.put(("error", os.getpid(), f"{type(e).__name__}: {e}"))


def run_setup(backbone: str, mode: str, cameras: int, opts: dict, duration_s: float) -> dict:
    """Start the processes of one set-up, time them together, return its row."""
    ctx = mp.get_context("spawn")  # CUDA in children: never fork a process that may hold it
    ready, results = ctx.Queue(), ctx.Queue()
    go, stop = ctx.Event(), ctx.Event()
    procs = [(1, cameras)] if mode == "shared" else [(cameras, 1)]
    base = gpu_memory_used_mib()
    workers = [
        ctx.Process(target=_worker, args=(backbone, per, opts, ready, go, stop, results))
        for count, per in procs
        for _ in range(count)
    ]
    for p in workers:
        p.start()
    try:
        warm = []
        for _ in workers:
            kind, pid, payload = ready.get(timeout=opts["start_timeout_s"])
            if kind == "error":
                raise RuntimeError(f"{mode} {backbone} x{cameras}: worker {pid} failed: {payload}")
            warm.append(payload)
        memory = gpu_memory_used_mib() - base
        t_go = time.monotonic()
        go.set()
        time.sleep(duration_s)
        t_stop = time.monotonic()
        stop.set()
        spans, reserved = [], []
        for _ in workers:
            _, _, s, r = results.get(timeout=120)
            spans.append(s)
            reserved.append(r)
    finally:
        stop.set()
        go.set()
        for p in workers:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    # frames finished in the common window: the first second (all processes reaching speed) excluded
    t0 = t_go + min(1.0, duration_s / 4)
    per_step = 1 if mode == "separate" else cameras
    done = sum(per_step for s in spans for a, b in s if t0 <= b <= t_stop)
    steps_ms = np.array([(b - a) * 1e3 for s in spans for a, b in s if t0 <= b <= t_stop])
    return {
        "backbone": backbone,
        "mode": mode,
        "cameras": cameras,
        "processes": len(workers),
        "frames_per_s": done / (t_stop - t0),
        "step_ms_p50": float(np.median(steps_ms)) if steps_ms.size else float("nan"),
        "step_ms_p90": float(np.percentile(steps_ms, 90)) if steps_ms.size else float("nan"),
        "gpu_memory_mib": memory,
        "torch_reserved_mib": float(sum(reserved)),
        "warm_up_s": float(max(warm)),
    }


def plot(rows: List[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for b in sorted({r["backbone"] for r in rows}):
        for mode, style in (("shared", "-"), ("separate", "--")):
            pts = sorted((r["cameras"], r["frames_per_s"], r["gpu_memory_mib"]) for r in rows
                         if r["backbone"] == b and r["mode"] == mode)  # fmt: skip
            if pts:
                n, fps, mem = zip(*pts, strict=True)
                axes[0].plot(n, fps, style, marker="o", label=f"{b} {mode}")
                axes[1].plot(n, [m / 1024 for m in mem], style, marker="o", label=f"{b} {mode}")
    axes[0].set(xlabel="cameras", ylabel="frames/s, all cameras", title="Throughput (shared: one model, solid)")
    axes[1].set(xlabel="cameras", ylabel="GPU memory in use, GiB", title="Memory")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def body(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--backbones", nargs="+", default=["vit_h", "repvit_m2_3"], choices=FULL_SIZE_BACKBONES,
        help="backbone presets to measure",
    )  # fmt: skip
    ap.add_argument("--cameras", nargs="+", type=int, default=[1, 2, 4], help="camera counts to measure")
    ap.add_argument("--classes", type=int, default=4, help="vocabulary size (COCO class names)")
    ap.add_argument("--precision", default="bf16", choices=PRECISIONS, help="compute precision")
    ap.add_argument("--image-size", type=int, default=1008, help="network input side S in pixels (multiple of 14)")
    ap.add_argument("--frame-size", default="1280x720", help="camera frame WxH")
    ap.add_argument("--duration-s", type=float, default=8.0, help="timed window of each set-up, in seconds")
    ap.add_argument("--start-timeout-s", type=float, default=300.0, help="longest wait for a process's warm-up")
    ap.add_argument("--out", default="artifacts/cameras", help="output path prefix: <out>.json and <out>.png")
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    if any(n < 1 for n in args.cameras):
        raise SystemExit("--cameras: counts must be >= 1")
    try:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"], capture_output=True, text=True
        ).stdout.strip()  # fmt: skip
    except FileNotFoundError:
        gpu = ""
    if not gpu:
        raise SystemExit("camera_benchmark.py measures a GPU: nvidia-smi finds none")
    w, h = (int(v) for v in args.frame_size.split("x"))
    opts = dict(precision=args.precision, image_size=args.image_size, classes=args.classes, frame_size=(w, h),
                seed=0, start_timeout_s=args.start_timeout_s)  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
    rows: List[dict] = []
    import datetime

    import torch  # the version only: CUDA is initialised in the worker processes alone

    env: Dict[str, object] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": gpu,
        "torch": torch.__version__,
        "args": {**vars(args), "out": os.path.basename(args.out)},
    }
    print(f"{'backbone':14s} {'mode':9s} {'cams':>4s} {'frames/s':>9s} {'step p50':>9s} {'GPU MiB':>8s}")
    for b in args.backbones:
        for n in sorted(set(args.cameras)):
            for mode in ("shared", "separate") if n > 1 else ("shared",):
                r = run_setup(b, mode, n, opts, args.duration_s)
                rows.append(r)
                print(f"{b:14s} {mode:9s} {n:4d} {r['frames_per_s']:9.1f} {r['step_ms_p50']:8.1f}ms "
                      f"{r['gpu_memory_mib']:8.0f}", flush=True)  # fmt: skip
                with open(args.out + ".json", "w") as f:  # after every set-up: a cut-off run keeps its rows
                    json.dump({"environment": env, "results": rows}, f, indent=1)
    plot(rows, args.out + ".png")
    print(f"wrote {args.out}.json and {args.out}.png")
    return 0


def main(argv=None) -> int:
    return cli_main(body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
