r"""The detector node's maximum sustainable input rate and its latencies over real DDS, by
ros2_benchmark's method (NVIDIA-ISAAC-ROS/ros2_benchmark; docs/offline.md, "ROS benchmark").

    source setup.bash
    python offline/ros_benchmark.py --bag run1.mcap --topic /camera/image_raw --frames 100 \\
        --start-node --params-file config/repvit_m2_3.yaml --lower 5 --upper 150 --out artifacts/ros_bench_repvit
    python offline/ros_benchmark.py --synthetic 1280x720 --start-node --param backbone=tiny --param device=cpu \\
        --lower 1 --upper 40 --out artifacts/ros_bench_tiny
    python offline/ros_benchmark.py --synthetic 1280x720 --input /image --output /dart/detections   # a running node

1. Frames go into memory first (``--frames`` messages of an image topic of a rosbag2, mcap or
   sqlite3, published as recorded; or a synthetic test pattern), so reading costs nothing later.
2. With ``--start-node`` the detector node starts as a child process (``--params-file`` /
   ``--param name=value``) and the benchmark waits until it subscribes (model loaded, warmed up).
3. A probe plays the frames in a loop at a fixed rate for ``--duration`` seconds, each with a
   unique key in ``header.stamp.sec`` (the node copies input headers into its detections), and
   waits ``--drain-s`` for late outputs. Per probe: frames sent and answered, playback and output
   rates, latency (send -> detections received) min/mean/p50/p90/p99/max, jitter, CPU load.
4. Search (:func:`dart_ros.evaluation.rate_search.search_max_rate`): warm-up probe, binary search
   on [``--lower``, ``--upper``] down to ``--width`` Hz, linear scan upward in ``--step`` Hz; a
   probe passes with its output rate within 10 % (scan: 5 %) of the playback rate and at most 5 %
   of the frames unanswered.
5. ``--iterations`` probes at the found rate and at each ``--fixed-rates`` rate (those above 1.05 ×
   the found rate skipped), concluded as ros2_benchmark does (best and worst iteration dropped).

6. With ``--library``, after the node has stopped: the Detector alone in this process with the
   node's settings (``--params-file`` / ``--param``) on the same frames, from decoded arrays and
   decoding each message, and the host's per-frame costs on the way in (serialise, deserialise,
   decode, copy to page-locked memory): the gap between the node's rate and the library's.

Writes ``<out>.json`` (every probe, the conclusion, the environment) and ``<out>.png`` (output vs
playback rate, latency percentiles vs rate) and prints a table. The node's own view (its
frame-drop counter, stage timings) is on ``/diagnostics``. Left out, unlike ros2_benchmark: GPU
utilisation sampling (run ``nvidia-smi dmon`` beside it) and preprocessing graphs between the
player and the node.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

from dart_ros.cliutil import add_debug_flag, cli_main
from dart_ros.evaluation.rate_search import ProbeResult, SearchResult, conclude, probe_result, search_max_rate

KEY_BASE = 1_000_000  # message keys in header.stamp.sec: far from any real epoch second of a bag


def load_bag_frames(path: str, topic: str, count: int) -> Tuple[type, list]:
    """The first ``count`` messages of ``topic`` (Image or CompressedImage) as rclpy messages."""
    from rclpy.serialization import deserialize_message
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from dart_ros.ros.bag_play import message_class

    with AnyReader([Path(path)], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            raise SystemExit(f"no topic {topic!r} in {path}; it has {sorted({c.topic for c in reader.connections})}")
        cls = message_class(conns[0].msgtype)
        frames = []
        for _, _, raw in reader.messages(connections=conns):
            frames.append(deserialize_message(bytes(raw), cls))
            if len(frames) >= count:
                break
    if not frames:
        raise SystemExit(f"{topic!r} in {path} has no messages")
    return cls, frames


def synthetic_frames(size: str, count: int) -> Tuple[type, list]:
    """``count`` rgb8 frames of the player's moving test pattern, ``size`` as WxH."""
    from sensor_msgs.msg import Image

    from dart_ros.ros.player import encode, test_pattern

    w, h = (int(v) for v in size.lower().split("x"))
    frames = []
    for i in range(count):
        msg = Image(height=h, width=w, encoding="rgb8", step=3 * w)
        msg.data = encode(test_pattern(i, h, w), "rgb8")
        msg.header.frame_id = "camera"
        frames.append(msg)
    return Image, frames


class Harness:
    """A player and a monitor in one rclpy context: frames out on ``input_topic``, detections in on
    ``output_topic`` (spun on a background thread, receive times taken in the callback)."""

    def __init__(self, msg_type: type, frames: list, input_topic: str, output_topic: str):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from vision_msgs.msg import Detection2DArray

        self.frames = frames
        self.context = Context()
        rclpy.init(context=self.context, domain_id=int(os.environ.get("ROS_DOMAIN_ID", "0")))
        self.node = rclpy.create_node("dart_ros_benchmark", context=self.context)
        # Deep reliable queues on our side, as ros2_benchmark's: frames the node does not answer
        # are its own drops (its depth-1 best-effort subscription), not the transport's.
        deep = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = self.node.create_publisher(msg_type, input_topic, deep)
        self.received: Dict[int, float] = {}
        self._lock = threading.Lock()
        self.node.create_subscription(Detection2DArray, output_topic, self._on_output, deep)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._spinner = threading.Thread(target=self._spin, daemon=True)
        self._spinner.start()
        self._next_key = KEY_BASE

    def _spin(self) -> None:
        # spin_once in a loop rather than spin(): close() can then stop and join this thread before
        # the context goes (an executor still waiting in rcl at shutdown can hang the process's exit)
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def _on_output(self, msg) -> None:
        t = time.monotonic()
        with self._lock:
            self.received.setdefault(int(msg.header.stamp.sec), t)

    def wait_for_node(self, timeout: float, alive=lambda: True) -> None:
        deadline = time.monotonic() + timeout
        while self.pub.get_subscription_count() == 0:
            if time.monotonic() > deadline or not alive():
                raise SystemExit("the node did not subscribe to the input topic in time")
            time.sleep(0.1)

    def probe(self, rate: float, duration: float, min_frames: int, drain_s: float) -> Tuple[ProbeResult, float]:
        """Play at ``rate`` Hz; the probe's result and the mean system CPU load (%) meanwhile."""
        import psutil

        n = max(min_frames, int(round(duration * rate)))
        sent: Dict[int, float] = {}
        psutil.cpu_percent(None)
        start = time.monotonic()
        for i in range(n):
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            msg = self.frames[i % len(self.frames)]
            key = self._next_key
            self._next_key += 1
            msg.header.stamp.sec, msg.header.stamp.nanosec = key, 0
            sent[key] = time.monotonic()  # before publish: our serialisation counts, as a driver's would
            self.pub.publish(msg)  # serialised here: the frame can take the next key at once
        end = time.monotonic() + drain_s
        while time.monotonic() < end:
            with self._lock:
                if all(k in self.received for k in sent):
                    break
            time.sleep(0.02)
        cpu = psutil.cpu_percent(None)
        with self._lock:
            received = {k: self.received[k] for k in sent if k in self.received}
        return probe_result(rate, sent, received), cpu

    def close(self) -> None:
        import rclpy

        self._stop.set()
        self._spinner.join(timeout=5.0)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def node_launch(
    msg_type_name: str, input_topic: str, param_items: List[str]
) -> Tuple[Dict[str, object], Dict[str, str]]:
    """Parameters and remappings that make the node read ``input_topic``: raw images on its ``image``
    input; compressed ones, named as image_transport names them (``<base>/compressed``), through
    ``image`` remapped to the base, with ``input_transport`` set to match."""
    import yaml

    params: Dict[str, object] = {}
    for item in param_items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--param expects NAME=VALUE, got {item!r}")
        params[name] = yaml.safe_load(value)  # as ROS reads -p values: lists, numbers, booleans
    if msg_type_name == "CompressedImage":
        params.setdefault("input_transport", "compressed")
        base, sep, _ = input_topic.rpartition("/compressed")
        if not sep or input_topic != base + "/compressed":
            raise SystemExit(f"compressed input {input_topic!r} must be named <base>/compressed (image_transport)")
        return params, {"image": base}
    return params, {"image": input_topic}


def start_node(args, msg_type: type):
    from dart_ros.ros.process import RosProcess

    params, remaps = node_launch(msg_type.__name__, args.input, args.param)
    log_path = (args.out + "_node.log") if args.out else ""
    if log_path:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    return RosProcess("dart_ros.ros.node", params, remaps=remaps, log_path=log_path, params_file=args.params_file)


def _median_ms(fn, reps: int = 20) -> float:
    import numpy as np

    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def library_rates(args, msg_type: type, frames: list) -> Dict[str, object]:
    """The Detector alone with the node's settings on the same frames, in this process: frames per
    second from decoded arrays (the library's own rate) and from the messages (each decoded in the
    loop, as the node does), plus the per-frame host costs on the way in: a message's (de)serialisation
    (what DDS and rclpy add), its decoding, and its copy into page-locked memory for the upload."""
    import torch
    from rclpy.serialization import deserialize_message, serialize_message

    from dart_ros import image_decode
    from dart_ros.detector import Detector
    from dart_ros.ros.params import configs_from_values, read_params_file

    values = read_params_file(args.params_file) if args.params_file else {}
    values.update(node_launch(msg_type.__name__, args.input, args.param)[0])
    det_cfg, node_cfg = configs_from_values(values)
    compressed = node_cfg.input_transport == "compressed"
    decode = image_decode.compressed_to_array if compressed else image_decode.image_to_array
    decoded = [decode(m) for m in frames]
    wire = serialize_message(frames[0])
    hwc = torch.from_numpy(decoded[0][0].copy())
    costs = {
        "message_bytes": len(wire),
        "serialize_ms": _median_ms(lambda: serialize_message(frames[0])),
        "deserialize_ms": _median_ms(lambda: deserialize_message(wire, msg_type)),
        "decode_ms": _median_ms(lambda: decode(frames[0])),
        "pinned_copy_ms": _median_ms(lambda: torch.empty(hwc.shape, dtype=hwc.dtype, pin_memory=True).copy_(hwc))
        if torch.cuda.is_available()
        else None,
    }
    det = Detector(det_cfg)
    try:
        det.warm_up()
        pipelined = node_cfg.pipelining

        def rate(inputs) -> float:
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.library_s or count < 2 * len(frames):
                item = inputs(count % len(frames))
                if pipelined:
                    det.submit(*item)
                else:
                    det.detect(*item)
                count += 1
            det.flush()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return count / (time.perf_counter() - start)

        rate(lambda i: decoded[i])  # warm: the pipeline's buffers, the allocator
        from_arrays = rate(lambda i: decoded[i])
        from_messages = rate(lambda i: decode(frames[i]))
    finally:
        det.close()
    return {"pipelining": pipelined, "from_arrays_fps": from_arrays, "from_messages_fps": from_messages, **costs}


def environment(args, source: Dict[str, object]) -> Dict[str, object]:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "source": source,
        "args": vars(args),
        "rmw": os.environ.get("RMW_IMPLEMENTATION", "default"),
    }
    if shutil.which("nvidia-smi"):
        q = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        env["gpu"] = q.stdout.strip()
    return env


def fixed_rate_rows(harness: Harness, rates: List[float], args) -> List[Dict[str, object]]:
    rows = []
    for rate in rates:
        runs = [harness.probe(rate, args.duration, args.min_frames, args.drain_s) for _ in range(args.iterations)]
        res = [r for r, _ in runs]
        lat = [r.latency_ms for r in res if r.latency_ms]
        rows.append(
            {
                "rate_hz": rate,
                "output_hz": conclude([r.output_hz for r in res]),
                "missed_fraction": conclude([r.missed_fraction for r in res]),
                "latency_ms": {
                    k: conclude([x[k] for x in lat], "max" if k == "max" else "min" if k == "min" else "mean")
                    for k in ("min", "mean", "p50", "p90", "p99", "max")
                }
                if lat
                else {},
                "jitter_ms_mean": conclude([r.jitter_ms["mean"] for r in res if r.jitter_ms]),
                "cpu_percent": conclude([c for _, c in runs]),
                "iterations": [r.as_dict() for r in res],
            }
        )
    return rows


def plot(report: Dict[str, object], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    probes = report["search"]["probes"]
    ok = [p for p in probes if p["passed"]]
    bad = [p for p in probes if not p["passed"]]
    top = max([p["playback_hz"] for p in probes] + [1.0])
    ax1.plot([0, top], [0, top], color="0.7", lw=1, label="output = playback")
    ax1.scatter([p["playback_hz"] for p in ok], [p["output_hz"] for p in ok], color="tab:green", label="passed")
    ax1.scatter(
        [p["playback_hz"] for p in bad],
        [p["output_hz"] for p in bad],
        color="tab:red",
        marker="x",
        label="failed (slower, or > 5 % unanswered)",
    )
    if report["max_rate_hz"]:
        ax1.axvline(report["max_rate_hz"], color="tab:blue", ls="--", lw=1, label=f"max {report['max_rate_hz']:.1f} Hz")
    ax1.set(xlabel="playback rate (Hz)", ylabel="output rate (Hz)", title="rate search")
    ax1.legend(fontsize=8)
    rows = [r for r in report["fixed_rates"] if r["latency_ms"]]
    for k, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^:")):
        ax2.plot([r["rate_hz"] for r in rows], [r["latency_ms"][k] for r in rows], style, label=k)
    ax2.set(xlabel="playback rate (Hz)", ylabel="latency, frame sent -> detections (ms)", title="latency")
    ax2.legend(fontsize=8)
    fig.suptitle(report.get("title", "dart_ros node"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args) -> Dict[str, object]:
    if args.bag:
        msg_type, frames = load_bag_frames(args.bag, args.topic, args.frames)
        source = {"bag": os.path.abspath(args.bag), "topic": args.topic, "frames": len(frames)}
    else:
        msg_type, frames = synthetic_frames(args.synthetic, args.frames)
        source = {"synthetic": args.synthetic, "frames": len(frames)}
    t_start = time.monotonic()
    node = start_node(args, msg_type) if args.start_node else None
    harness = Harness(msg_type, frames, args.input, args.output)
    try:
        harness.wait_for_node(args.node_timeout_s, alive=(node.alive if node else lambda: True))
        t_ready = time.monotonic()
        if node is not None:
            print(f"node subscribed {t_ready - t_start:.1f} s after its start", flush=True)
        cpu_by_probe: List[float] = []

        def probe(rate: float) -> ProbeResult:
            r, cpu = harness.probe(rate, args.duration, args.min_frames, args.drain_s)
            cpu_by_probe.append(cpu)
            print(
                f"  probe {rate:7.2f} Hz: sent {r.sent:4d}, answered {r.received:4d}, output {r.output_hz:7.2f} Hz, "
                f"p50 {r.latency_ms.get('p50', float('nan')):7.1f} ms",
                flush=True,
            )
            return r

        print(f"rate search on [{args.lower:g}, {args.upper:g}] Hz", flush=True)
        found: SearchResult = search_max_rate(
            probe,
            args.lower,
            args.upper,
            args.width,
            args.step,
            binary_tolerance=args.rate_tolerance,
            linear_tolerance=args.rate_tolerance / 2,
            max_missed_fraction=args.max_missed,
        )
        fixed = sorted(
            {r for r in args.fixed_rates if found.max_rate_hz and r <= 1.05 * found.max_rate_hz}
            | ({found.max_rate_hz} if found.max_rate_hz else set())
        )
        print(f"fixed-rate runs at {fixed} Hz, {args.iterations} each", flush=True)
        rows = fixed_rate_rows(harness, fixed, args)
        first = min(harness.received.values(), default=None)
    finally:
        harness.close()
        if node is not None:
            node.stop()
    library = library_rates(args, msg_type, frames) if args.library else None  # the GPU is free again
    # start-up as a user sees it: process start -> input subscribed (model loaded, graphs captured,
    # kernels compiled) -> the first detections received (the first probe's first frame)
    start_up = (
        {"to_subscribed_s": t_ready - t_start, "to_first_detection_s": first - t_start if first else None}
        if node is not None
        else None
    )
    probes = [
        dict(p.as_dict(), passed=ok, cpu_percent=cpu)
        for p, ok, cpu in zip(found.probes, found.passed, cpu_by_probe[1:], strict=False)
    ]  # [0]: the warm-up probe
    return {
        "environment": environment(args, source),
        "max_rate_hz": found.max_rate_hz,
        "at_upper_bound": found.at_upper_bound,
        "node_start": start_up,
        "library": library,
        "search": {"probes": probes},
        "fixed_rates": rows,
        "title": args.title or (args.bag or f"synthetic {args.synthetic}"),
    }


def print_table(report: Dict[str, object]) -> None:
    m = report["max_rate_hz"]
    if report.get("node_start"):
        s = report["node_start"]
        first = s["to_first_detection_s"]
        print(f"\nnode start: subscribed after {s['to_subscribed_s']:.1f} s, first detections after "
              + (f"{first:.1f} s" if first is not None else "none"))  # fmt: skip
    lib = report.get("library")
    if lib:
        print(
            f"\nthe library alone ({'pipelined' if lib['pipelining'] else 'sequential'}, same settings and frames): "
            f"{lib['from_arrays_fps']:.1f} frames/s from decoded arrays, {lib['from_messages_fps']:.1f} decoding "
            f"each message; per frame ({lib['message_bytes'] / 1e6:.1f} MB): serialise {lib['serialize_ms']:.2f} ms, "
            f"deserialise {lib['deserialize_ms']:.2f} ms, decode {lib['decode_ms']:.2f} ms"
            + (f", pinned copy {lib['pinned_copy_ms']:.2f} ms" if lib["pinned_copy_ms"] is not None else "")
        )
    print(
        f"\nmax sustainable input rate: {'none (the lower bound failed)' if m is None else f'{m:.2f} Hz'}"
        + (" (the upper bound: widen --upper)" if report["at_upper_bound"] else "")
    )
    print(
        f"{'rate Hz':>8} {'output Hz':>10} {'missed %':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'jitter ms':>10} {'CPU %':>6}"
    )
    for r in report["fixed_rates"]:
        lat = r["latency_ms"] or {k: float("nan") for k in ("p50", "p90", "p99", "max")}
        print(
            f"{r['rate_hz']:8.2f} {r['output_hz']:10.2f} {100 * r['missed_fraction']:9.1f} {lat['p50']:8.1f} "
            f"{lat['p90']:8.1f} {lat['p99']:8.1f} {lat['max']:8.1f} {r['jitter_ms_mean']:10.2f} {r['cpu_percent']:6.1f}"
        )


def body(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bag", help="rosbag2 directory or .mcap/.db3 file")
    src.add_argument("--synthetic", metavar="WxH", help="a synthetic rgb8 test pattern of this size")
    ap.add_argument("--topic", default="/camera/image_raw", help="image topic in the bag")
    ap.add_argument("--frames", type=int, default=100, help="frames held in memory and played in a loop")
    ap.add_argument("--input", default="/image", help="the node's input topic")
    ap.add_argument("--output", default="/dart/detections", help="the node's detections topic")
    ap.add_argument("--start-node", action="store_true", help="start the detector node as a child process")
    ap.add_argument("--params-file", default="", help="--start-node: a parameter file (config/*.yaml)")
    ap.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="--start-node: a node parameter (YAML value), repeatable",
    )
    ap.add_argument("--node-timeout-s", type=float, default=900.0, help="wait this long for the node to subscribe")
    ap.add_argument("--lower", type=float, default=1.0, help="search: lowest rate (Hz)")
    ap.add_argument("--upper", type=float, default=120.0, help="search: highest rate (Hz)")
    ap.add_argument("--width", type=float, default=4.0, help="search: binary search stops at this window (Hz)")
    ap.add_argument("--step", type=float, default=2.0, help="search: linear scan step (Hz)")
    ap.add_argument(
        "--rate-tolerance",
        type=float,
        default=0.1,
        help="a probe passes with its output rate at least (1 - this) x the playback rate (a fraction; the "
        "final linear scan uses half of it)",
    )
    ap.add_argument(
        "--max-missed", type=float, default=0.05, help="a probe passes with at most this fraction of frames unanswered"
    )
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of playback per probe")
    ap.add_argument("--min-frames", type=int, default=10, help="frames per probe at least")
    ap.add_argument("--drain-s", type=float, default=3.0, help="wait for late detections after a probe")
    ap.add_argument(
        "--fixed-rates", type=float, nargs="*", default=[10.0, 15.0, 30.0, 60.0],
        help="rates (Hz) measured after the search, those at or below 1.05x the found maximum",
    )  # fmt: skip
    ap.add_argument("--iterations", type=int, default=5, help="probes per fixed rate (best and worst dropped)")
    ap.add_argument(
        "--library",
        action="store_true",
        help="after the node's run, the Detector alone in this process with the same settings and frames "
        "(frames/s from decoded arrays and from the messages; per-frame host costs), for the gap to the node",
    )
    ap.add_argument("--library-s", type=float, default=5.0, help="--library: seconds per measurement")
    ap.add_argument("--title", default="", help="plot title")
    ap.add_argument("--out", default="artifacts/ros_benchmark", help="writes <out>.json and <out>.png")
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    report = run(args)
    print_table(report)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out + ".json", "w") as f:
            json.dump(report, f, indent=1)
        plot(report, args.out + ".png")
        print(f"wrote {args.out}.json and {args.out}.png")
    return 0 if report["max_rate_hz"] is not None else 1


def main(argv=None) -> int:
    return cli_main(body, argv)


if __name__ == "__main__":
    sys.exit(main())
