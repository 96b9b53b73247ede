"""Image decoding for message-shaped inputs: sensor_msgs/Image and CompressedImage fields -> numpy.

ROS-free (the messages are read by attribute: ``encoding``, ``height``, ``width``, ``step``,
``data``, ``format``), so the node and the offline tools (bag readers) share it. numpy and OpenCV
only; tensors stay behind the Detector.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from dart_ros.types import BadImageError

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
