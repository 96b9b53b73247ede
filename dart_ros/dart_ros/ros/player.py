"""A small image source node: a synthetic test pattern (no camera needed) or a folder of images.

    python -m dart_ros.ros.player --ros-args -p rate_hz:=10.0 -p width:=641 -p height:=479 \
        -p encoding:=bgr8 -p frames:=50 -r image:=/camera/image_raw

Publishes sensor_msgs/Image on ``image`` (or CompressedImage on ``image/compressed`` with
``compressed:=true``), with increasing stamps and ``frame_id``. Like image_tools' burger mode.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def test_pattern(index: int, height: int, width: int) -> np.ndarray:
    """An RGB frame: a colour gradient with a few moving shapes (deterministic in ``index``)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([xx / max(width - 1, 1), yy / max(height - 1, 1), 0.5 + 0.5 * np.sin((xx + yy) / 40.0)], -1)
    img = (img * 120 + 40).astype(np.uint8)
    t = index * 0.15
    s = min(height, width)
    for k, color in enumerate([(230, 40, 40), (40, 200, 60), (50, 80, 230)]):
        cx = int(width * (0.5 + 0.35 * np.cos(t + 2.1 * k)))
        cy = int(height * (0.5 + 0.35 * np.sin(1.3 * t + 2.1 * k)))
        r = max(3, int(s * (0.08 + 0.03 * k)))
        if k == 0:  # a filled disc
            img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = color
        else:  # a filled rectangle, 2r x r
            img[max(cy - r // 2, 0) : max(cy + r // 2 + 1, 0), max(cx - r, 0) : max(cx + r + 1, 0)] = color
    return img


def encode(rgb: np.ndarray, encoding: str) -> bytes:
    if encoding == "rgb8":
        return rgb.tobytes()
    if encoding == "bgr8":
        return np.ascontiguousarray(rgb[:, :, ::-1]).tobytes()
    if encoding in ("rgba8", "bgra8"):
        ch = rgb if encoding == "rgba8" else rgb[:, :, ::-1]
        return np.dstack([ch, np.full(rgb.shape[:2], 255, np.uint8)]).tobytes()
    if encoding == "mono8":
        return rgb.mean(axis=2).astype(np.uint8).tobytes()
    raise ValueError(f"unsupported encoding {encoding!r}")


CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}

# name -> (default, meaning): the player's parameters.
PARAMETERS = {
    "rate_hz": (10.0, "frames per second"),
    "width": (640, "test pattern width in pixels"),
    "height": (480, "test pattern height in pixels"),
    "encoding": ("rgb8", "one of " + ", ".join(CHANNELS)),
    "frames": (0, "frames to publish (0: forever)"),
    "frame_id": ("camera", "header.frame_id"),
    "image_dir": ("", "publish the images of this folder instead of the test pattern"),
    "compressed": (False, "publish JPEG CompressedImage on <image>/compressed"),
    "reliable": (False, "reliable QoS (default best effort)"),
    "wait_for_subscribers": (0, "start once this many subscribers matched (no frame lost to discovery)"),
}


class ImagePlayer(Node):
    def __init__(self):
        super().__init__("image_player")
        v = {name: self.declare_parameter(name, default).value for name, (default, _) in PARAMETERS.items()}
        self.rate_hz, self.width, self.height = v["rate_hz"], v["width"], v["height"]
        self.encoding, self.frames, self.frame_id = v["encoding"], v["frames"], v["frame_id"]
        self.image_dir, self.compressed, reliable = v["image_dir"], v["compressed"], v["reliable"]
        self.wait_subscribers = v["wait_for_subscribers"]
        if self.encoding not in CHANNELS:
            raise ValueError(f"encoding must be one of {sorted(CHANNELS)}")
        self.files = (
            sorted(f for f in glob.glob(os.path.join(self.image_dir, "*")) if f.lower().endswith(IMAGE_SUFFIXES))
            if self.image_dir
            else []
        )
        if self.image_dir and not self.files:
            raise ValueError(f"no images in {self.image_dir!r}")
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        from sensor_msgs.msg import CompressedImage, Image

        if self.compressed:
            # image_transport's naming: the resolved base topic plus /compressed
            self.pub = self.create_publisher(CompressedImage, self.resolve_topic_name("image") + "/compressed", qos)
        else:
            self.pub = self.create_publisher(Image, "image", qos)
        self.index = 0
        self.create_timer(1.0 / self.rate_hz, self._tick)
        src = self.image_dir or f"test pattern {self.width}x{self.height}"
        self.get_logger().info(f"publishing {src} on {self.pub.topic_name} at {self.rate_hz} Hz")

    def _frame(self) -> np.ndarray:
        if self.files:
            import cv2

            bgr = cv2.imread(self.files[self.index % len(self.files)], cv2.IMREAD_COLOR)
            return np.ascontiguousarray(bgr[:, :, ::-1])
        return test_pattern(self.index, self.height, self.width)

    def _tick(self) -> None:
        if self.index == 0 and self.pub.get_subscription_count() < self.wait_subscribers:
            return
        if self.frames and self.index >= self.frames:
            # A reliable writer destroyed now loses the samples still in transit (large frames over
            # a slow transport): wait until the readers have them.
            from rclpy.duration import Duration

            self.pub.wait_for_all_acked(Duration(seconds=10))
            raise SystemExit(0)
        from sensor_msgs.msg import CompressedImage, Image

        rgb = self._frame()
        stamp = self.get_clock().now().to_msg()
        if self.compressed:
            import cv2

            msg = CompressedImage(format="jpeg")
            msg.data = cv2.imencode(".jpg", rgb[:, :, ::-1])[1].tobytes()
        else:
            msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=self.encoding)
            msg.step = rgb.shape[1] * CHANNELS[self.encoding]
            msg.data = encode(rgb, self.encoding)
        msg.header.stamp = stamp
        msg.header.frame_id = self.frame_id
        self.pub.publish(msg)
        self.index += 1


def main(args=None) -> None:
    from dart_ros.ros.cli_help import exit_with_help_if_asked

    exit_with_help_if_asked(__doc__, [(k, d, m) for k, (d, m) in PARAMETERS.items()], args)
    rclpy.init(args=args)
    node = None
    try:
        node = ImagePlayer()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException, SystemExit):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
