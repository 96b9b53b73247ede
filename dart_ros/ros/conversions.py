"""Conversions between ROS messages and the Detector's numpy inputs/outputs (no cv_bridge needed).

Only numpy and OpenCV (JPEG/PNG decoding) here; tensors stay behind the Detector.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

# sensor_msgs/Image encoding -> (channels, Detector colour layout)
ENCODINGS = {
    "rgb8": (3, "rgb"),
    "bgr8": (3, "bgr"),
    "rgba8": (4, "rgba"),
    "bgra8": (4, "bgra"),
    "mono8": (1, "mono"),
    "8UC1": (1, "mono"),
    "8UC3": (3, "bgr"),  # OpenCV's convention for untyped 3-channel images
}


class BadImageError(ValueError):
    """A message cannot be turned into an image. ``key`` groups errors for log-once."""

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key


def image_to_array(msg) -> Tuple[np.ndarray, str]:
    """sensor_msgs/Image -> (HxWxC uint8 view, colour layout). Honours ``step`` row padding."""
    enc = msg.encoding
    if enc not in ENCODINGS:
        raise BadImageError(
            f"unsupported image encoding {enc!r}; supported: {', '.join(ENCODINGS)}", key=f"encoding:{enc}"
        )
    channels, layout = ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h < 2 or w < 2:
        raise BadImageError(f"image of {w}x{h} pixels is too small", key="size")
    if step < w * channels:
        raise BadImageError(f"step {step} < width {w} x {channels} channels", key="step")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size < step * h:
        raise BadImageError(f"image data has {buf.size} bytes, header says {step * h}", key="size")
    arr = buf[: step * h].reshape(h, step)[:, : w * channels].reshape(h, w, channels)
    return arr, layout


def compressed_to_array(msg) -> Tuple[np.ndarray, str]:
    """sensor_msgs/CompressedImage (jpeg/png) -> (HxWx3 BGR uint8, "bgr")."""
    import cv2

    fmt = (msg.format or "").lower()
    if fmt and not any(f in fmt for f in ("jpeg", "jpg", "png")):
        raise BadImageError(f"unsupported compressed format {msg.format!r}; supported: jpeg, png", key=f"format:{fmt}")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise BadImageError(f"cannot decode compressed image ({buf.size} bytes, format {msg.format!r})", key="decode")
    return img, "bgr"


def to_rgb(arr: np.ndarray, layout: str) -> np.ndarray:
    """Any supported layout -> HxWx3 RGB (for drawing)."""
    if layout == "rgb":
        return arr
    if layout == "mono":
        return np.repeat(arr, 3, axis=2)
    if layout in ("bgr", "bgra"):
        return np.ascontiguousarray(arr[:, :, 2::-1])
    return np.ascontiguousarray(arr[:, :, :3])  # rgba


def array_to_image_msg(rgb: np.ndarray, header):
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header = header
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = int(rgb.shape[1] * 3)
    msg.data = np.ascontiguousarray(rgb).tobytes()
    return msg


def detections_to_msg(dets, header):
    """:class:`dart_ros.types.Detections` -> vision_msgs/Detection2DArray with ``header`` copied.

    ``class_id`` is the class name; bbox center/size are source-image pixels; the hypothesis pose
    carries the box centre for tools that read it; ``id`` stays empty (no tracking).
    """
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    out = Detection2DArray()
    out.header = header
    names = dets.class_names
    for (x1, y1, x2, y2), score, cid in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.class_ids.tolist()):
        d = Detection2D()
        d.header = header
        d.bbox.center.position.x = (x1 + x2) / 2.0
        d.bbox.center.position.y = (y1 + y2) / 2.0
        d.bbox.size_x = x2 - x1
        d.bbox.size_y = y2 - y1
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = names[cid]
        hyp.hypothesis.score = float(score)
        hyp.pose.pose.position.x = d.bbox.center.position.x
        hyp.pose.pose.position.y = d.bbox.center.position.y
        d.results.append(hyp)
        out.detections.append(d)
    return out


def label_info_msg(class_names, threshold: float, header):
    from vision_msgs.msg import LabelInfo, VisionClass

    msg = LabelInfo()
    msg.header = header
    msg.threshold = float(threshold)
    for i, name in enumerate(class_names):
        msg.class_map.append(VisionClass(class_id=i, class_name=name))
    return msg
