"""Where a start goes: seconds per start-up phase of the Detector, first start and second start.

    python dev/startup_profile.py --params-file dart_ros/config/vit_h.yaml --out artifacts/startup

Each start is a fresh Python process sharing one kernel cache folder (a new empty one unless
``--cache-dir`` names one), as two starts of the node would: imports, building the model, the
runners, the vocabulary (text encoder), the warm-up split into backbone and encoder-decoder, and the
first detection on a 1920×1080 frame. Writes <out>.json (every start's phases) and prints a table.
The node adds rclpy's start and its parameters on top (``offline/ros_benchmark.py`` measures the
node's own time to first detection).
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # before the heavy imports: they are the first phase

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402


def _one_start(args) -> dict:
    phases = {}
    mark = [T0]

    def done(name: str) -> None:
        now = time.perf_counter()
        phases[name] = round(now - mark[0], 3)
        mark[0] = now

    import torch

    done("import torch")
    from dart_ros.detector import Detector
    from dart_ros.model.registry import build_model
    from dart_ros.ros.params import configs_from_values, read_params_file

    done("import dart_ros")
    values = read_params_file(args.params_file) if args.params_file else {}
    for item in args.param:
        key, _, raw = item.partition("=")
        values[key] = raw
    values["cache_dir"] = args.cache_dir
    config, _ = configs_from_values(values)
    classes = list(config.classes)
    config = dataclasses.replace(config, classes=[])  # set below, timed on their own
    device = "cuda" if torch.cuda.is_available() and config.device in ("auto", "", "cuda") else config.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    torch.zeros(1, device=device)
    done("device context")
    model = build_model(
        backbone=config.backbone,
        image_size=config.image_size or None,
        load_text_encoder=config.load_text_encoder,
        seed=config.seed,
        device=device,
    )
    sync()
    done("build model (random weights, on the GPU)")
    det = Detector(config, model=model)
    sync()
    done("runners")
    det.set_classes(classes)
    sync()
    done(f"vocabulary ({len(classes)} classes)")
    feat = det.runners.backbone.warm_up([])
    sync()
    done("warm-up: backbone")
    det.runners.encdec.warm_up(feat, config.prompt_mode == "official")
    sync()
    done("warm-up: encoder-decoder")
    import numpy as np

    frame = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    det.detect(frame)
    sync()
    done("first detection")
    return {"phases_s": phases, "total_s": round(time.perf_counter() - T0, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params-file", default="", help="a parameter file of the node (config/*.yaml)")
    ap.add_argument("--param", action="append", default=[], help="NAME=VALUE on top of the file")
    ap.add_argument("--cache-dir", default="", help="kernel cache folder (default: a new empty one)")
    ap.add_argument("--starts", type=int, default=2)
    ap.add_argument("--out", default="", help="write <out>.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(_one_start(args)), flush=True)
        return
    cache = args.cache_dir or tempfile.mkdtemp(prefix="dart_ros_cache_")
    starts = []
    for i in range(args.starts):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--cache-dir", cache]
        cmd += ["--params-file", args.params_file] if args.params_file else []
        for p in args.param:
            cmd += ["--param", p]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"start {i + 1} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        starts.append(json.loads(lines[-1][len("RESULT ") :]))
        print(f"start {i + 1}: {starts[-1]['total_s']:.1f} s", flush=True)
    names = list(starts[0]["phases_s"])
    print(f"\n{'phase':44s}" + "".join(f"{'start ' + str(i + 1):>10s}" for i in range(len(starts))))
    for n in names + ["total"]:
        vals = [s["total_s"] if n == "total" else s["phases_s"][n] for s in starts]
        print(f"{n:44s}" + "".join(f"{v:10.2f}" for v in vals))
    if args.out:
        import torch

        report = {
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "torch": torch.__version__,
            "args": {k: v for k, v in vars(args).items() if k not in ("child", "cache_dir")},
            "starts": starts,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".json", "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
