"""Image messages -> arrays, without ROS: every supported encoding against known pixel values."""

import types

import numpy as np
import pytest

from dart_ros.image_decode import SUPPORTED, image_to_array
from dart_ros.types import BadImageError

RGB = (200, 100, 50)


def message(encoding, h, w, data, step=None, bigendian=False):
    # The fields of sensor_msgs/Image that decoding reads; a real message works the same.
    return types.SimpleNamespace(
        encoding=encoding, height=h, width=w, step=step or len(data) // h, data=bytes(data), is_bigendian=int(bigendian)
    )


def mosaic(pattern: str, h=8, w=10, rgb=RGB) -> np.ndarray:
    """A uniform colour as a Bayer sensor sees it: ``pattern`` names the 2x2 cell row by row."""
    value = dict(zip("RGB", rgb, strict=True))
    out = np.zeros((h, w), np.uint8)
    for i, c in enumerate(pattern.upper()):
        out[i // 2 :: 2, i % 2 :: 2] = value[c]
    return out


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_mosaics_demosaic_to_their_colour(pattern):
    raw = mosaic(pattern)
    arr, layout = image_to_array(message(f"bayer_{pattern}8", *raw.shape, raw.tobytes()))
    assert layout == "rgb" and arr.shape == (8, 10, 3)
    np.testing.assert_allclose(arr[2:-2, 2:-2].reshape(-1, 3).mean(0), RGB, atol=1)


def _yuv(rgb):
    r, g, b = rgb  # BT.601 limited range, as cameras encode and OpenCV decodes
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return [int(round(x)) for x in (y, u, v)]


@pytest.mark.parametrize("encoding, order", [("yuv422", "UYVY"), ("yuv422_yuy2", "YUYV")])
def test_yuv422_converts_to_rgb(encoding, order):
    y, u, v = _yuv(RGB)
    pair = {"UYVY": [u, y, v, y], "YUYV": [y, u, y, v]}[order]
    h, w = 6, 8
    data = np.tile(np.array(pair, np.uint8), h * w // 2)
    arr, layout = image_to_array(message(encoding, h, w, data.tobytes()))
    assert layout == "rgb" and arr.shape == (h, w, 3)
    np.testing.assert_allclose(arr.reshape(-1, 3).mean(0), RGB, atol=3)


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_keeps_the_high_byte(bigendian):
    values = np.array([[0x1234, 0xFF00, 0x00FF], [0x8000, 0x0100, 0xFFFF]], np.uint16)
    data = values.astype(">u2" if bigendian else "<u2").tobytes()
    arr, layout = image_to_array(message("mono16", 2, 3, data, bigendian=bigendian))
    assert layout == "mono"
    np.testing.assert_array_equal(arr[..., 0], [[0x12, 0xFF, 0x00], [0x80, 0x01, 0xFF]])


def test_row_padding_is_dropped_for_converted_encodings():
    raw = mosaic("rggb")
    padded = np.concatenate([raw, np.full((raw.shape[0], 6), 7, np.uint8)], axis=1)
    arr, _ = image_to_array(message("bayer_rggb8", *raw.shape, padded.tobytes(), step=padded.shape[1]))
    want, _ = image_to_array(message("bayer_rggb8", *raw.shape, raw.tobytes()))
    np.testing.assert_array_equal(arr, want)


def test_each_bad_input_reason_has_its_own_key():
    """The node logs each reason once: two different problems must not share a key."""
    keys = {}
    for name, msg in {
        "size": message("rgb8", 1, 5, bytes(15)),
        "step": message("rgb8", 4, 4, bytes(40), step=10),
        "data_size": message("rgb8", 4, 4, bytes(20), step=12),
        "encoding:32FC1": message("32FC1", 4, 4, bytes(64)),
    }.items():
        with pytest.raises(BadImageError) as e:
            image_to_array(msg)
        keys[name] = e.value.key
    assert keys == {k: k for k in keys}
    assert "bayer_rggb8" in SUPPORTED and "yuv422" in SUPPORTED and "mono16" in SUPPORTED
