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


# Encodings converted to RGB here (what cameras commonly publish): bytes per pixel of the message.
# Bayer mosaics are demosaiced (OpenCV names a pattern by its second row, hence the swapped names).
_BAYER = {
    "bayer_rggb8": "COLOR_BayerBG2RGB",
    "bayer_bggr8": "COLOR_BayerRG2RGB",
    "bayer_gbrg8": "COLOR_BayerGR2RGB",
    "bayer_grbg8": "COLOR_BayerGB2RGB",
}
# 4:2:2 YUV, two bytes a pixel: ROS' yuv422 is UYVY, yuv422_yuy2 is YUYV (BT.601, as OpenCV converts).
_YUV422 = {
    "yuv422": "COLOR_YUV2RGB_UYVY",
    "uyvy": "COLOR_YUV2RGB_UYVY",
    "yuv422_yuy2": "COLOR_YUV2RGB_YUY2",
    "yuyv": "COLOR_YUV2RGB_YUY2",
}
# 16-bit mono: the high byte (value / 256), as cv_bridge converts mono16 to mono8.
_MONO16 = ("mono16", "16UC1")
SUPPORTED = tuple(ENCODINGS) + tuple(_BAYER) + tuple(_YUV422) + _MONO16


def _rows(msg, bytes_per_pixel: int) -> np.ndarray:
    """The (H, W·bytes) uint8 pixel rows of a sensor_msgs/Image, ``step`` padding dropped (a view)."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h < 2 or w < 2:
        raise BadImageError(f"image of {w}x{h} pixels is too small", key="size")
    if step < w * bytes_per_pixel:
        raise BadImageError(f"step {step} < width {w} x {bytes_per_pixel} bytes per pixel", key="step")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size < step * h:
        raise BadImageError(f"image data has {buf.size} bytes, header says {step * h}", key="data_size")
    return buf[: step * h].reshape(h, step)[:, : w * bytes_per_pixel]


def image_to_array(msg) -> Tuple[np.ndarray, str]:
    """sensor_msgs/Image -> (HxWxC uint8, colour layout). Honours ``step`` row padding; the
    encodings of :data:`ENCODINGS` come back as views, the others converted (Bayer demosaiced,
    YUV 4:2:2 to RGB, 16-bit mono to 8 bits)."""
    enc = msg.encoding
    h, w = int(msg.height), int(msg.width)
    if enc in ENCODINGS:
        channels, layout = ENCODINGS[enc]
        return _rows(msg, channels).reshape(h, w, channels), layout
    if enc in _BAYER or enc in _YUV422:
        import cv2

        if enc in _BAYER:
            raw = np.ascontiguousarray(_rows(msg, 1))
            return cv2.cvtColor(raw, getattr(cv2, _BAYER[enc])), "rgb"
        raw = np.ascontiguousarray(_rows(msg, 2)).reshape(h, w, 2)
        return cv2.cvtColor(raw, getattr(cv2, _YUV422[enc])), "rgb"
    if enc in _MONO16:
        order = ">" if msg.is_bigendian else "<"
        values = _rows(msg, 2).copy().view(order + "u2")  # rows are contiguous after the copy
        return (values >> 8).astype(np.uint8).reshape(h, w, 1), "mono"
    raise BadImageError(f"unsupported image encoding {enc!r}; supported: {', '.join(SUPPORTED)}", key=f"encoding:{enc}")


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


# Depth images: encoding -> (numpy dtype, bytes per pixel); values in the unit depth3d expects.
DEPTH_ENCODINGS = {"16UC1": ("u2", 2), "mono16": ("u2", 2), "32FC1": ("f4", 4)}


def depth_image_to_metres(msg) -> np.ndarray:
    """A depth sensor_msgs/Image (16UC1 millimetres or 32FC1 metres) -> HxW float32 metres, NaN
    where there is no measurement (:func:`dart_ros.depth3d.depth_to_metres`)."""
    from dart_ros.depth3d import depth_to_metres

    enc = msg.encoding
    if enc not in DEPTH_ENCODINGS:
        raise BadImageError(
            f"unsupported depth encoding {enc!r}; supported: 16UC1 (mm), 32FC1 (m)", key=f"depth_encoding:{enc}"
        )
    kind, size = DEPTH_ENCODINGS[enc]
    order = ">" if msg.is_bigendian else "<"
    raw = _rows(msg, size).copy().view(order + kind).reshape(int(msg.height), int(msg.width))
    return depth_to_metres(raw.astype(kind), enc)
