"""3D boxes from depth against synthetic scenes of known geometry, invalid depth handling, and matching
depth and camera_info to an image by stamp."""

import numpy as np
import pytest

from dart_ros.depth3d import (
    Depth3DConfig,
    Intrinsics,
    StampedBuffer,
    box_to_3d,
    depth_to_metres,
    match_streams,
)

K = Intrinsics(fx=500.0, fy=500.0, cx=320.0, cy=240.0)


def plate_scene(center=(0.5, 0.2, 3.0), size=(0.6, 1.2), wall=8.0, tilt=0.0):
    """A rectangular plate facing the camera (``tilt``: its depth grows by this many metres from its
    left to its right edge) in front of a wall; returns (depth in metres, its exact 2D box)."""
    h, w = 480, 640
    depth = np.full((h, w), wall, np.float32)
    x, y, z = center
    u1, u2 = K.cx + (x - size[0] / 2) * K.fx / z, K.cx + (x + size[0] / 2) * K.fx / z
    v1, v2 = K.cy + (y - size[1] / 2) * K.fy / z, K.cy + (y + size[1] / 2) * K.fy / z
    cols = np.arange(int(np.ceil(u1)), int(np.floor(u2)))
    ramp = z - tilt / 2 + tilt * (cols - u1) / (u2 - u1)
    depth[int(np.ceil(v1)) : int(np.floor(v2)), cols] = ramp[None, :]
    return depth, (u1, v1, u2, v2)


def test_a_plate_of_known_size_at_a_known_distance():
    depth, box = plate_scene()
    got = box_to_3d(box, depth, K)
    np.testing.assert_allclose(got.center, (0.5, 0.2, 3.0), atol=0.01)  # 1 cm
    np.testing.assert_allclose(got.size[:2], (0.6, 1.2), rtol=0.02)  # 2 %
    assert got.size[2] == pytest.approx(0.0, abs=1e-6) and got.valid_fraction == 1.0


def test_a_loose_box_over_the_background_and_holes_in_millimetre_depth():
    depth, (u1, v1, u2, v2) = plate_scene()
    pad_u, pad_v = 0.15 * (u2 - u1), 0.15 * (v2 - v1)  # the detector's box is 30 % too big
    raw = np.round(depth * 1000).astype(np.uint16)
    rng = np.random.default_rng(0)
    raw[rng.random(raw.shape) < 0.3] = 0  # 30 % of the pixels have no measurement
    got = box_to_3d((u1 - pad_u, v1 - pad_v, u2 + pad_u, v2 + pad_v), depth_to_metres(raw, "16UC1"), K)
    assert got.center[2] == pytest.approx(3.0, abs=0.01)  # the inner part is the plate, not the wall
    np.testing.assert_allclose(got.center[:2], (0.5, 0.2), atol=0.01)
    assert 0.6 < got.valid_fraction < 0.8


def test_depth_extent_of_a_tilted_plate():
    depth, box = plate_scene(tilt=0.4)
    got = box_to_3d(box, depth, K)
    # the central half of a 0.4 m ramp spans 0.2 m; the 10-90 percentile spread 80 % of that
    assert got.size[2] == pytest.approx(0.16, abs=0.02)
    assert got.center[2] == pytest.approx(3.0, abs=0.01)


@pytest.mark.parametrize("fill", [np.nan, 0.0, np.inf, 50.0, 0.05])
def test_no_3d_box_without_valid_depth(fill):
    depth, box = plate_scene()
    depth[:] = fill  # no measurement, or one outside [min_depth_m, max_depth_m]
    assert box_to_3d(box, depth_to_metres(depth, "32FC1"), K) is None


def test_no_3d_box_for_empty_or_outside_boxes():
    depth, _ = plate_scene()
    assert box_to_3d((10, 10, 10, 50), depth, K) is None
    assert box_to_3d((700, 10, 800, 50), depth, K) is None


def test_too_few_valid_pixels_give_no_box():
    depth, box = plate_scene()
    depth[np.random.default_rng(1).random(depth.shape) < 0.9] = np.nan
    assert box_to_3d(box, depth, K, Depth3DConfig(min_valid_fraction=0.2)) is None
    assert box_to_3d(box, depth, K, Depth3DConfig(min_valid_fraction=0.05)) is not None


def test_encodings_and_intrinsics_are_checked():
    with pytest.raises(ValueError, match="16UC1"):
        depth_to_metres(np.zeros((2, 2), np.uint8), "mono8")
    assert Intrinsics.from_k([500, 0, 320, 0, 400, 240, 0, 0, 1]) == Intrinsics(500, 400, 320, 240)
    with pytest.raises(ValueError, match="fx, fy > 0"):
        Intrinsics.from_k([0] * 9)


def test_depth_and_camera_info_match_an_image_by_stamp_and_stay_bounded():
    depth, info = StampedBuffer(size=5), StampedBuffer(size=5)
    streams = {"depth": depth, "info": info}
    assert match_streams(1.0, streams, 0.02) is None  # nothing yet
    depth.add(0.985, "d0")
    depth.add(1.010, "d1")
    assert match_streams(1.0, streams, 0.02) is None  # no camera_info yet
    info.add(1.012, "c1")
    assert match_streams(1.0, streams, 0.02) == {"depth": "d1", "info": "c1"}  # the nearer depth
    assert match_streams(1.1, streams, 0.02) is None  # 90 ms apart: another moment
    for k in range(100):  # a fast stream keeps only its newest `size` messages
        depth.add(2.0 + k, f"x{k}")
    assert len(depth) == 5 and depth.nearest(2.0, 0.5) is None and depth.nearest(101.0, 0.01) == "x99"
    with pytest.raises(ValueError):
        StampedBuffer(0)


def test_depth_messages_decode_to_metres_with_row_padding_and_byte_order():
    """sensor_msgs/Image-shaped depth: 16UC1 mm (either byte order) and 32FC1 m, padded rows."""
    from types import SimpleNamespace

    from dart_ros.image_decode import depth_image_to_metres
    from dart_ros.types import BadImageError

    mm = np.array([[0, 1500, 2000], [65535, 10, 3000]], np.uint16)
    for order in ("<", ">"):
        rows = np.concatenate([mm.astype(order + "u2").view(np.uint8), np.zeros((2, 4), np.uint8)], axis=1)
        msg = SimpleNamespace(encoding="16UC1", height=2, width=3, step=10, data=rows.tobytes(),
                              is_bigendian=int(order == ">"))  # fmt: skip
        got = depth_image_to_metres(msg)
        assert np.isnan(got[0, 0]) and got[0, 1] == pytest.approx(1.5) and got[1, 0] == pytest.approx(65.535)
    m = np.array([[np.nan, 2.5], [0.0, np.inf]], "<f4")
    msg = SimpleNamespace(encoding="32FC1", height=2, width=2, step=8, data=m.tobytes(), is_bigendian=0)
    got = depth_image_to_metres(msg)
    assert got[0, 1] == 2.5 and np.isnan(got[[0, 1, 1], [0, 0, 1]]).all()
    with pytest.raises(BadImageError, match="unsupported depth encoding 'rgb8'"):
        depth_image_to_metres(SimpleNamespace(encoding="rgb8", height=2, width=2, step=6, data=b"\0" * 12,
                                              is_bigendian=0))  # fmt: skip
    with pytest.raises(BadImageError, match="header says"):
        depth_image_to_metres(SimpleNamespace(encoding="32FC1", height=2, width=2, step=8, data=b"\0" * 8,
                                              is_bigendian=0))  # fmt: skip
