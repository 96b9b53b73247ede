"""End-to-end demo: image player -> detector node -> this process, over real ROS 2.

    ./tools/demo.sh                                  # tiny random-weight model, CPU, no camera
    ./tools/demo.sh --sam3 ~/models/sam3.pt          # the real SAM3 (ViT-H); a GPU is recommended
    ./tools/demo.sh --sam3 sam3.pt --backbone repvit_m2_3 --backbone-checkpoint repvit_m2_3_distilled.pt

Starts the detector node and a test-pattern player as separate processes (as ``ros2 launch``
would), prints every frame's detections and per-stage latency, saves a few annotated frames, and
ends with a summary. Exit status 0 only if detections arrived for at least half of the frames sent
(the node keeps only the newest frame).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sam3", default="", help="path of sam3.pt (default: random weights)")
    ap.add_argument("--backbone", default="", help="preset (default: vit_h with --sam3, else tiny)")
    ap.add_argument("--backbone-checkpoint", default="", help="DART student or pruned checkpoint")
    ap.add_argument("--classes", default="person,car,dog,traffic light", help="comma-separated vocabulary")
    ap.add_argument("--frames", type=int, default=20, help="frames to send")
    ap.add_argument("--rate", type=float, default=5.0, help="player rate in Hz")
    ap.add_argument("--size", default="640x480", help="player frame size WxH")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threshold", type=float, default=0.3)
    ap.add_argument("--out", default="demo_out", help="folder for annotated frames and the summary")
    ap.add_argument("--save", type=int, default=3, help="annotated frames to save")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    backbone = args.backbone or ("vit_h" if args.sam3 else "tiny")
    if not args.sam3:
        print("*** No --sam3 checkpoint given: the detector runs with RANDOM WEIGHTS. The pipeline is real;")
        print("*** the boxes are not. Pass --sam3 /path/to/sam3.pt for the real model.\n")
    width, height = (int(v) for v in args.size.lower().split("x"))
    os.makedirs(args.out, exist_ok=True)

    import cv2
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray

    from dart_ros.ros.launch_logic import parse_classes

    node_params = dict(
        backbone=backbone,
        device=args.device,
        classes=parse_classes(args.classes),
        confidence_threshold=args.threshold,
        sam3_checkpoint=args.sam3,
        backbone_checkpoint=args.backbone_checkpoint,
        diagnostics_period_s=1.0,
        qos_reliability="reliable",
        qos_depth=1,
    )
    from dart_ros.ros.process import RosProcess

    log_dir = os.path.abspath(args.out)
    detector = RosProcess("dart_ros.ros.node", node_params, log_path=os.path.join(log_dir, "detector_node.log"))
    rclpy.init()
    node = rclpy.create_node("dart_demo")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    dets, diags, saved = {}, [], []

    def on_dets(msg):
        dets[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = (time.monotonic(), msg)

    def on_annotated(msg):
        if len(saved) < args.save:
            rgb = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
            path = os.path.join(args.out, f"annotated_{len(saved):02d}.png")
            cv2.imwrite(path, rgb[:, :, ::-1])
            saved.append(path)

    node.create_subscription(Detection2DArray, "/dart/detections", on_dets, 50)
    node.create_subscription(Image, "/dart/image_annotated", on_annotated, 5)
    node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diags.append(m), 10)
    player = None
    deadline = time.monotonic() + args.timeout
    try:
        print(f"starting detector node (backbone {backbone}) … log: {detector.log_path}")
        while "listening on" not in detector.log():
            executor.spin_once(timeout_sec=0.1)
            if not detector.alive():
                print(detector.log()[-4000:])
                print("detector node exited during start-up")
                return 1
            if time.monotonic() > deadline:
                print("timed out waiting for the detector node")
                return 1
        print("detector ready; starting the image player\n")
        player = RosProcess(
            "dart_ros.ros.player",
            dict(
                rate_hz=args.rate, width=width, height=height, frames=args.frames, reliable=True, wait_for_subscribers=1
            ),
            log_path=os.path.join(log_dir, "image_player.log"),
        )
        seen = 0
        while seen < args.frames and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
            stamps = sorted(dets)
            for key in stamps[seen:]:
                _, msg = dets[key]
                seen += 1
                top = sorted(msg.detections, key=lambda d: -d.results[0].hypothesis.score)[:3]
                desc = ", ".join(
                    f"{d.results[0].hypothesis.class_id} {d.results[0].hypothesis.score:.2f} "
                    f"@({d.bbox.center.position.x:.0f},{d.bbox.center.position.y:.0f} "
                    f"{d.bbox.size_x:.0f}x{d.bbox.size_y:.0f})"
                    for d in top
                )
                print(f"frame {seen:3d}  stamp {key[0]}.{key[1]:09d}  {len(msg.detections):3d} detections  {desc}")
            if not player.alive() and seen < args.frames and len(dets) == seen:
                # the player finished; give in-flight frames a moment, then stop waiting
                end = time.monotonic() + 5.0
                while time.monotonic() < end and len(dets) == seen:
                    executor.spin_once(timeout_sec=0.1)
                if len(dets) == seen:
                    break
        end = time.monotonic() + 2.5
        while time.monotonic() < end:  # one more diagnostics report
            executor.spin_once(timeout_sec=0.1)
    finally:
        if player is not None:
            player.stop()
        detector.stop()
        node.destroy_node()
        rclpy.try_shutdown()

    return summarise(args, backbone, dets, diags, saved)


def summarise(args, backbone, dets, diags, saved) -> int:
    print("\n== summary")
    status = {kv.key: kv.value for kv in diags[-1].status[0].values} if diags else {}
    rows = [
        ("backbone", backbone),
        ("weights", status.get("weights", "?")),
        ("device", status.get("device", "?")),
        ("frames sent", args.frames),
        ("frames with detections", len(dets)),
    ]
    for stage in ("preprocess", "backbone", "encdec", "postprocess", "total"):
        rows.append((f"{stage} ms (p50)", status.get(f"latency_{stage}_ms_p50", "?")))
    rows.append(("receive->publish ms (p50)", status.get("latency_receive_to_publish_ms_p50", "?")))
    times = sorted(t for t, _ in dets.values())
    if len(times) > 2:
        rows.append(("output rate Hz", f"{(len(times) - 1) / (times[-1] - times[0]):.2f}"))
    for k, v in rows:
        print(f"  {k:28s} {v}")
    if saved:
        print("  annotated frames:", ", ".join(saved))
    # The node keeps only the newest frame: frames that arrive while it is busy (or while a shared
    # machine stalls it) are dropped by design, so half of them answered shows the chain works.
    ok = len(dets) >= max(1, args.frames // 2)
    if ok and len(dets) < args.frames:
        print(f"  ({args.frames - len(dets)} frames replaced by newer ones before the node took them)")
    print("\nDEMO OK" if ok else "\nDEMO FAILED: too few frames came back (see the logs in " + args.out + ")")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
