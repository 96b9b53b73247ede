"""Speed benchmark of the DART optimisation hierarchy and of every backbone, on one GPU.

    python offline/benchmark.py --out artifacts/bench                      # everything (minutes on a big GPU)
    python offline/benchmark.py --backbones vit_h --classes 1 4 --levels batched fast pipelined

Levels (each includes the previous ones' ideas):
  naive      official SAM3 single-prompt path per class: backbone + forward_grounding per class
  shared     backbone once per frame, forward_grounding per class
  batched    DART: detection-only backbone, all classes batched through the enc-dec (eager PyTorch)
  fast       + reduced-precision weights, real-valued RoPE, CUDA graphs (backbone; enc-dec per bucket)
  pipelined  + frame t+1's backbone overlapping frame t's enc-dec on two CUDA streams (throughput)

All levels use the same precision (``--precision``, bf16 by default) and random full-size weights
(latency does not depend on weight values). Warm-up excluded; medians and p90 over many frames.
Writes <out>.json (with GPU, versions, date and arguments) and <out>.png, and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import time
from typing import Dict, List

import numpy as np
import torch

from dart_ros.cliutil import add_debug_flag, cli_main
from dart_ros.coco import COCO_CLASSES
from dart_ros.config import PRECISIONS, DetectorConfig
from dart_ros.detector import Detector
from dart_ros.presets import FULL_SIZE_BACKBONES
from dart_ros.reference import reference_outputs

LEVELS = ("naive", "shared", "batched", "fast", "pipelined")


def vocabulary(n: int) -> List[str]:
    names = list(COCO_CLASSES)
    while len(names) < n:
        names += [f"{c} {len(names) // 80}" for c in COCO_CLASSES]
    return names[:n]


def measure(fn, budget_s: float, min_iters: int, max_iters: int, warmup: int) -> List[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out, start = [], time.perf_counter()
    while len(out) < max_iters and (len(out) < min_iters or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def stats(ms: List[float]) -> Dict[str, float]:
    a = np.asarray(ms)
    return {
        "median_ms": float(np.median(a)),
        "p90_ms": float(np.percentile(a, 90)),
        "iters": len(a),
        "fps": 1000.0 / float(np.median(a)),
    }


def make_detector(backbone: str, runtime: str, args) -> Detector:
    return Detector(
        DetectorConfig(
            backbone=backbone,
            device="cuda",
            runtime=runtime,
            precision=args.precision,
            image_size=args.image_size,
            confidence_threshold=0.3,
            max_classes_per_chunk=args.chunk,
            compile_encdec=args.compile_encdec,
            tune_gemms=not args.no_tune_gemms,
        )
    )


def free(*objs) -> None:
    del objs
    gc.collect()
    torch.cuda.empty_cache()
    # Each model's modules are new classes to torch.compile: without a reset, later backbones in the
    # same process run into dynamo's recompile limit and fall back to eager.
    torch._dynamo.reset()


def run_eager_levels(args, frames, results) -> None:
    det = make_detector("vit_h", "eager", args)
    px = det.preprocess(frames[0])[0]
    amp = torch.autocast(
        "cuda", dtype=torch.bfloat16 if args.precision == "bf16" else torch.float16, enabled=args.precision != "fp32"
    )
    for n in args.classes:
        names = vocabulary(n)
        det.set_classes(names)
        for level in ("naive", "shared", "batched"):
            if level not in args.levels:
                continue
            if level in ("naive", "shared") and n > args.max_naive_classes:
                continue
            torch.cuda.reset_peak_memory_stats()
            if level == "batched":
                fn = lambda: det.detect(frames[0])  # noqa: E731
            else:

                def fn(share=level == "shared", names=names):
                    with torch.inference_mode(), amp:
                        pixels = det.preprocess(frames[0])[0]
                        reference_outputs(det.model.sam3, pixels, names, det.config.prompt_mode, share_backbone=share)

            slow = level != "batched"
            ms = measure(fn, args.budget_s, 3 if slow else 10, 5 if slow and n >= 16 else args.iters, 1 if slow else 3)
            row = {
                "backbone": "vit_h",
                "level": level,
                "classes": n,
                **stats(ms),
                "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20,
            }
            if level == "batched":
                row["backbone_ms"] = stats(measure(lambda: det.features(px), 1.0, 10, 50, 3))["median_ms"]
                feat = det.features(px)
                row["encdec_ms"] = stats(measure(lambda feat=feat: det.encode_decode(feat), 1.0, 10, 50, 3))[
                    "median_ms"
                ]
            results.append(row)
            print_row(row)
    free(det)


def run_fast_levels(backbone: str, args, frames, results) -> None:
    det = make_detector(backbone, "fast", args)
    warmup_s = det.warm_up()
    print(f"{backbone}: warm-up (graph capture, compiles) {warmup_s:.1f} s")
    px = det.preprocess(frames[0])[0]
    for n in args.classes:
        det.set_classes(vocabulary(n))
        if "fast" in args.levels:
            torch.cuda.reset_peak_memory_stats()
            ms = measure(lambda: det.detect(frames[0]), args.budget_s, 10, args.iters, 5)
            row = {"backbone": backbone, "level": "fast", "classes": n, **stats(ms), "warmup_s": warmup_s}
            row["backbone_ms"] = stats(measure(lambda: det.features(px), 1.0, 10, 100, 5))["median_ms"]
            feat = det.features(px)
            row["encdec_ms"] = stats(measure(lambda feat=feat: det.encode_decode(feat), 1.0, 10, 100, 5))["median_ms"]
            row["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
            results.append(row)
            print_row(row)
        if "pipelined" in args.levels:
            torch.cuda.reset_peak_memory_stats()
            for f in frames[:4]:
                det.submit(f)
            det.flush()
            torch.cuda.synchronize()
            count, lat = 0, []
            start = time.perf_counter()
            while count < args.iters or time.perf_counter() - start < min(args.budget_s, 2.0):
                for r in det.submit(frames[count % len(frames)], meta=time.perf_counter()):
                    lat.append((time.perf_counter() - r.meta) * 1e3)
                count += 1
                if count >= 4 * args.iters:
                    break
            for r in det.flush():
                lat.append((time.perf_counter() - r.meta) * 1e3)
            elapsed = time.perf_counter() - start
            row = {
                "backbone": backbone,
                "level": "pipelined",
                "classes": n,
                "fps": count / elapsed,
                "median_ms": 1000.0 * elapsed / count,
                "latency_p50_ms": float(np.median(lat)),
                "latency_p90_ms": float(np.percentile(lat, 90)),
                "iters": count,
                "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20,
            }
            results.append(row)
            print_row(row)
    free(det)


def print_row(r) -> None:
    extra = ""
    if "backbone_ms" in r:
        extra = f"  backbone {r['backbone_ms']:7.2f} ms  enc-dec {r['encdec_ms']:7.2f} ms"
    if "latency_p50_ms" in r:
        extra = f"  latency p50 {r['latency_p50_ms']:7.2f} ms"
    print(
        f"{r['backbone']:16s} {r['level']:10s} {r['classes']:3d} cls  {r['median_ms']:8.2f} ms  "
        f"{r['fps']:7.1f} FPS  mem {r.get('peak_mem_mb', 0):7.0f} MB{extra}",
        flush=True,
    )


def environment(args) -> Dict[str, str]:
    from importlib.metadata import version

    import sam3  # noqa: F401
    import timm

    from dart_ros.runtime import blaslt

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "sam3": version("sam3"),
        "python": platform.python_version(),
        "nvmath": version("nvmath-python") if blaslt.available() else None,
        # the output name only: a machine's folders do not belong in a published report
        "args": {**vars(args), "out": os.path.basename(args.out)},
    }


def speedups(results) -> Dict[str, float]:
    by = {(r["backbone"], r["level"], r["classes"]): r for r in results}
    out = {}
    for n in sorted({r["classes"] for r in results}):
        naive = by.get(("vit_h", "naive", n))
        for level in ("shared", "batched", "fast", "pipelined"):
            r = by.get(("vit_h", level, n))
            if naive and r:
                out[f"{level}_over_naive_{n}cls"] = r["fps"] / naive["fps"]
    return out


def plot(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    ax = axes[0]
    for level in LEVELS:
        pts = sorted((r["classes"], r["fps"]) for r in results if r["backbone"] == "vit_h" and r["level"] == level)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=level)
    ax.set(xscale="log", yscale="log", xlabel="classes", ylabel="FPS", title="ViT-H: optimisation hierarchy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax = axes[1]
    for b in sorted({r["backbone"] for r in results}):
        for level, style in (("fast", "--"), ("pipelined", "-")):
            pts = sorted((r["classes"], r["fps"]) for r in results if r["backbone"] == b and r["level"] == level)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, marker="o", label=f"{b} {level}")
    ax.set(
        xscale="log", yscale="log", xlabel="classes", ylabel="FPS", title="Backbones (fast: dashed, pipelined: solid)"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def body(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--backbones", nargs="+", default=list(FULL_SIZE_BACKBONES), choices=FULL_SIZE_BACKBONES,
        help="backbone presets to measure (default: all full-size ones)",
    )  # fmt: skip
    ap.add_argument("--classes", nargs="+", type=int, default=[1, 3, 4, 8, 16, 80], help="vocabulary sizes to measure")
    ap.add_argument("--levels", nargs="+", default=list(LEVELS), choices=LEVELS, help="hierarchy levels (see above)")
    ap.add_argument("--precision", default="bf16", choices=PRECISIONS, help="compute precision of every level")
    ap.add_argument("--image-size", type=int, default=1008, help="network input side S in pixels (multiple of 14)")
    ap.add_argument("--chunk", type=int, default=16, help="max classes per enc-dec chunk")
    ap.add_argument("--iters", type=int, default=60, help="timed frames per measurement (at most)")
    ap.add_argument("--budget-s", type=float, default=3.0, help="time per measurement before stopping early")
    ap.add_argument(
        "--max-naive-classes", type=int, default=80, help="skip the naive level above this many classes (slow)"
    )
    ap.add_argument("--frame-size", default="1280x720", help="camera frame WxH fed to the detector")
    ap.add_argument("--compile-encdec", action="store_true", help="fast levels: torch.compile the enc-dec loops")
    ap.add_argument(
        "--no-tune-gemms",
        action="store_true",
        help="fast levels: torch's cuBLASLt pick for the ViT's GEMMs even with nvmath-python installed",
    )
    ap.add_argument("--out", default="artifacts/benchmark", help="output path prefix: <out>.json and <out>.png")
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmark.py measures GPU speed: no CUDA device")
    w, h = (int(v) for v in args.frame_size.split("x"))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(8)]
    results: List[dict] = []
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def save():  # after every backbone: a cut-off run still leaves its numbers
        report = {"environment": environment(args), "results": results, "speedups": speedups(results)}
        with open(args.out + ".json", "w") as f:
            json.dump(report, f, indent=1)
        return report

    if "vit_h" in args.backbones and set(args.levels) & {"naive", "shared", "batched"}:
        run_eager_levels(args, frames, results)
        save()
    if set(args.levels) & {"fast", "pipelined"}:
        for b in args.backbones:
            run_fast_levels(b, args, frames, results)
            save()
    report = save()
    plot(results, args.out + ".png")
    print("\nspeed-ups over naive per-class SAM3 (ViT-H):")
    for k, v in report["speedups"].items():
        print(f"  {k:32s} {v:6.1f}x")
    print(f"wrote {args.out}.json and {args.out}.png")
    return 0


def main(argv=None) -> int:
    return cli_main(body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
