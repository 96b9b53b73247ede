"""Replay image topics of a rosbag2 (mcap or sqlite3) with plain rclpy (no rosbag2 install needed).

    python -m dart_ros.ros.bag_play run1.mcap --topics /camera/image_raw --rate 15 \
        --ros-args -r /camera/image_raw:=/image

Messages are published as recorded (serialized CDR, no conversion), headers untouched, so the
detector's outputs can be matched to inputs by stamp (as ros2_benchmark does). ``--rate`` plays at
a fixed frequency, ``--timing`` with the bag's recorded gaps; ``--wait-subscribers`` holds the
first message until that many subscribers matched (then waits ``--delay`` seconds more).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import QoSProfile, ReliabilityPolicy


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> sensor_msgs.msg.Image (from the installed interfaces)."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ros_args = argv[argv.index("--ros-args") :] if "--ros-args" in argv else []
    own = argv[: len(argv) - len(ros_args)]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bag", help="rosbag2 directory or .mcap/.db3 file")
    ap.add_argument("--topics", nargs="*", default=[], help="topics to play (default: all)")
    ap.add_argument("--rate", type=float, default=10.0, help="messages per second (ignored with --timing)")
    ap.add_argument("--timing", action="store_true", help="replay with the recorded inter-arrival times")
    ap.add_argument("--loop", type=int, default=1, help="play the bag this many times (0 = forever)")
    ap.add_argument("--max", type=int, default=0, help="stop after this many messages (0 = all)")
    ap.add_argument("--qos", choices=("reliable", "best_effort"), default="reliable")
    ap.add_argument("--wait-subscribers", type=int, default=0)
    ap.add_argument(
        "--delay",
        type=float,
        default=0.5,
        help="seconds to wait after subscribers matched: discovery completes on the "
        "subscriber's side a little later, and a best-effort reader drops what comes first",
    )
    args = ap.parse_args(own)

    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    rclpy.init(args=["bag_play"] + ros_args)
    node = rclpy.create_node("bag_play")
    qos = QoSProfile(
        depth=10, reliability=ReliabilityPolicy.RELIABLE if args.qos == "reliable" else ReliabilityPolicy.BEST_EFFORT
    )
    sent = 0
    try:
        with AnyReader([Path(args.bag)], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
            conns = [c for c in reader.connections if not args.topics or c.topic in args.topics]
            if not conns:
                node.get_logger().error(f"no matching topics in {args.bag}")
                return 2
            pubs = {c.topic: node.create_publisher(message_class(c.msgtype), c.topic, qos) for c in conns}
            deadline = time.monotonic() + 30.0
            while (
                args.wait_subscribers
                and time.monotonic() < deadline
                and any(p.get_subscription_count() < args.wait_subscribers for p in pubs.values())
            ):
                rclpy.spin_once(node, timeout_sec=0.05)
            end = time.monotonic() + args.delay
            while time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.05)
            rounds = 0
            while args.loop == 0 or rounds < args.loop:
                t0_bag = t0_wall = None
                for conn, stamp, raw in reader.messages(connections=conns):
                    if args.timing:
                        t0_bag = stamp if t0_bag is None else t0_bag
                        t0_wall = time.monotonic() if t0_wall is None else t0_wall
                        wait = (stamp - t0_bag) / 1e9 - (time.monotonic() - t0_wall)
                    else:
                        wait = (1.0 / args.rate) if sent else 0.0
                    if wait > 0:
                        time.sleep(wait)
                    pubs[conn.topic].publish(bytes(raw))
                    sent += 1
                    if args.max and sent >= args.max:
                        return 0
                rounds += 1
        node.get_logger().info(f"published {sent} messages")
        return 0
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
