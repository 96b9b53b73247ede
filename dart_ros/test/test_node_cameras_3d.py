"""The node with several cameras through one model, and with 3D boxes from depth: real node
processes, real DDS (confined to this machine), the tiny random-weight model on the CPU."""

import time

import numpy as np
import pytest
from test_node import image_msg, same_header

from dart_ros.ros.process import RosProcess
from ros_util import Collector, RosClient, require_ros

pytestmark = pytest.mark.ros

CLASSES = ["person", "car"]


def statuses(collector):
    """name -> key/values of the newest status of that name in the collected DiagnosticArrays."""
    out = {}
    for msg in collector.msgs:
        for s in msg.status:
            out[s.name] = {"message": s.message, **{kv.key: kv.value for kv in s.values}}
    return out


def reliable(depth=10):
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def test_several_cameras_through_one_model(tmp_path, rng):
    """cameras: [front, rear]: each camera's frames come back on its own topic with its own header;
    a silent camera holds nobody up; frames waiting together share a batch; one diagnostics status
    per camera; the same detections as one image through the library."""
    require_ros()
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray

    from dart_ros.config import DetectorConfig
    from dart_ros.detector import Detector
    from dart_ros.image_decode import image_to_array

    params = dict(backbone="tiny", device="cpu", classes=CLASSES, confidence_threshold=0.0, max_detections=10)
    node = RosProcess(
        "dart_ros.ros.node",
        name="dart_mc",
        log_path=str(tmp_path / "mc.log"),
        params=dict(params, cameras=["front", "rear"], qos_reliability="reliable", qos_depth=1,
                    diagnostics_period_s=0.5),
        remaps={"front/image": "/mc/front/image", "rear/image": "/mc/rear/image"},
    )  # fmt: skip
    client = RosClient("dart_test_cameras")
    try:
        n = client.node
        out = {cam: Collector() for cam in ("front", "rear")}
        for cam, got in out.items():
            n.create_subscription(Detection2DArray, f"/dart_mc/{cam}/detections", got, 100)
        diags = Collector()
        n.create_subscription(DiagnosticArray, "/diagnostics", diags, 50)
        pubs = {cam: n.create_publisher(Image, f"/mc/{cam}/image", reliable()) for cam in ("front", "rear")}
        client.spin_until(lambda: "camera rear: listening on /mc/rear/image" in node.log(), 60, "start:\n" + node.log())
        client.spin_until(lambda: all(p.get_subscription_count() for p in pubs.values()), 20, "matches")

        # only the front camera talks: it is served, the rear publishes nothing
        front = [image_msg(rng, 120, 160, "rgb8", frame_id="front_optical") for _ in range(3)]
        for msg in front:
            pubs["front"].publish(msg)
            client.spin_until(lambda m=msg: out["front"].find(lambda d: same_header(d.header, m.header)), 30, "front")
        assert not out["rear"].msgs

        # the rear camera: another size and encoding, its own topic and header
        rear = image_msg(rng, 90, 200, "bgr8", frame_id="rear_optical")
        pubs["rear"].publish(rear)
        client.spin_until(lambda: out["rear"].find(lambda d: same_header(d.header, rear.header)), 30, "rear")
        got_rear = out["rear"].find(lambda d: same_header(d.header, rear.header))
        assert not out["front"].find(lambda d: same_header(d.header, rear.header))

        # each camera's result is that image's own: compare with the library on the same weights
        det = Detector(DetectorConfig(**params))
        for msg, got in ((front[0], out["front"].find(lambda d: same_header(d.header, front[0].header))),
                         (rear, got_rear)):  # fmt: skip
            want = det.detect(*image_to_array(msg))
            assert len(got.detections) == len(want) > 0
            centres = np.array([[d.bbox.center.position.x, d.bbox.center.position.y] for d in got.detections])
            np.testing.assert_allclose(centres, (want.boxes[:, :2] + want.boxes[:, 2:]) / 2, atol=0.05)
            assert [d.results[0].hypothesis.class_id for d in got.detections] == want.labels

        # both cameras streaming: frames that wait together go through one batch
        stream = {cam: [image_msg(rng, 120, 160, frame_id=f"{cam}_optical") for _ in range(15)] for cam in pubs}
        for k in range(15):
            for cam in pubs:
                pubs[cam].publish(stream[cam][k])
            client.spin_for(0.02)
        for cam in pubs:  # the newest frame of each camera is always served
            last = stream[cam][-1]
            client.spin_until(lambda c=cam, m=last: out[c].find(lambda d: same_header(d.header, m.header)), 30, cam)

        def reported():
            s = statuses(diags)
            return s.get("dart_mc: camera rear", {}).get("frames_processed") not in (None, "0", "1") and s

        client.spin_until(reported, 10, "per-camera diagnostics")
        time.sleep(0.6)
        client.spin_for(0.6)
        s = statuses(diags)
        assert {"dart_mc: detector", "dart_mc: camera front", "dart_mc: camera rear"} <= set(s)
        assert s["dart_mc: detector"]["cameras"] == "front,rear"
        assert float(s["dart_mc: detector"]["mean_batch_size"]) > 1.0, s["dart_mc: detector"]
        assert s["dart_mc: camera rear"]["input_topic"] == "/mc/rear/image"
        for c, sent in (("front", 18), ("rear", 16)):
            cam = s[f"dart_mc: camera {c}"]
            received, processed = int(cam["frames_received"]), int(cam["frames_processed"])
            assert processed + int(cam["total_dropped_frames"]) == received <= sent and processed >= 2, cam
        assert "pipelining" not in node.log() or "batched instead" in node.log()
    finally:
        client.close()
        assert node.stop() in (0, -2, 130), node.log()[-3000:]


def depth_msgs(stamp, frame_id, h=120, w=160, metres=2.0, encoding="32FC1", fx=100.0):
    """A registered depth image of a wall at ``metres`` and its camera_info (K at that resolution)."""
    from sensor_msgs.msg import CameraInfo, Image

    if encoding == "32FC1":
        data, step = np.full((h, w), metres, "<f4").tobytes(), w * 4
    elif encoding == "16UC1":
        data, step = np.full((h, w), round(metres * 1000), "<u2").tobytes(), w * 2
    else:
        data, step = np.zeros((h, w, 3), np.uint8).tobytes(), w * 3
    depth = Image(height=h, width=w, encoding=encoding, step=step)
    depth.data = data
    info = CameraInfo(height=h, width=w)
    info.k = [fx, 0.0, w / 2, 0.0, fx, h / 2, 0.0, 0.0, 1.0]
    for m in (depth, info):
        m.header.stamp = stamp
        m.header.frame_id = frame_id
    return depth, info


def test_3d_detections_from_a_registered_depth_image(tmp_path, rng):
    """depth_3d: Detection3DArray in the depth image's optical frame, stamped as the frame; each box's
    centre and size the 2D box back-projected at the depth (a half-resolution depth image: boxes
    scaled); no 3D for a frame without depth close in time or with unusable depth, and the node
    keeps serving; RViz markers while subscribed."""
    require_ros()
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image
    from vision_msgs.msg import Detection2DArray, Detection3DArray
    from visualization_msgs.msg import Marker, MarkerArray

    node = RosProcess(
        "dart_ros.ros.node",
        name="dart_3d",
        log_path=str(tmp_path / "d3.log"),
        params=dict(backbone="tiny", device="cpu", classes=CLASSES, confidence_threshold=0.0, max_detections=5,
                    depth_3d=True, qos_reliability="reliable", diagnostics_period_s=0.5),
        remaps={"image": "/d3/image", "depth/image": "/d3/depth", "depth/camera_info": "/d3/depth_info"},
    )  # fmt: skip
    client = RosClient("dart_test_3d")
    try:
        n = client.node
        dets2d, dets3d, markers, diags = Collector(), Collector(), Collector(), Collector()
        n.create_subscription(Detection2DArray, "/dart_3d/detections", dets2d, 50)
        n.create_subscription(Detection3DArray, "/dart_3d/detections_3d", dets3d, 50)
        n.create_subscription(MarkerArray, "/dart_3d/markers_3d", markers, 50)
        n.create_subscription(DiagnosticArray, "/diagnostics", diags, 50)
        pub_img = n.create_publisher(Image, "/d3/image", reliable())
        pub_depth = n.create_publisher(Image, "/d3/depth", reliable())
        pub_info = n.create_publisher(CameraInfo, "/d3/depth_info", reliable())
        client.spin_until(lambda: "depth from /d3/depth" in node.log(), 60, "start:\n" + node.log())
        client.spin_until(
            lambda: all(p.get_subscription_count() for p in (pub_img, pub_depth, pub_info)), 20, "matches"
        )

        def frame_with_depth(encoding="32FC1", metres=2.0, depth_stamp_offset=0):
            img = image_msg(rng, 240, 320, frame_id="color_optical")
            t = img.header.stamp
            stamp = type(t)(sec=t.sec + depth_stamp_offset, nanosec=t.nanosec)
            depth, info = depth_msgs(stamp, "depth_registered_optical", encoding=encoding, metres=metres)
            return img, depth, info

        def send(img, depth=None, info=None, want3d=True):
            last = [0.0]

            def done():
                if dets2d.find(lambda d: same_header(d.header, img.header)) and (
                    not want3d or dets3d.find(lambda d: d.header.stamp == img.header.stamp)
                ):
                    return True
                if time.monotonic() - last[0] > 2.0:  # depth first: the frame's detections look it up
                    for pub, m in ((pub_depth, depth), (pub_info, info)):
                        if m is not None:
                            pub.publish(m)
                    client.spin_for(0.2)
                    pub_img.publish(img)
                    last[0] = time.monotonic()
                return False

            client.spin_until(done, 30, f"detections of stamp {img.header.stamp.sec}")
            return dets2d.find(lambda d: same_header(d.header, img.header))

        img, depth, info = frame_with_depth()
        d2 = send(img, depth, info)
        d3 = dets3d.find(lambda d: d.header.stamp == img.header.stamp)
        assert d3.header.frame_id == "depth_registered_optical"
        assert 0 < len(d3.detections) <= len(d2.detections)
        by_score = {(d.results[0].hypothesis.class_id, d.results[0].hypothesis.score): d for d in d2.detections}
        fx, cx, cy, scale = 100.0, 80.0, 60.0, 0.5  # depth K at half the colour resolution
        for d in d3.detections:
            hyp = d.results[0].hypothesis
            b2 = by_score[(hyp.class_id, hyp.score)].bbox
            c = d.bbox.center.position
            assert c.z == pytest.approx(2.0, abs=1e-4)
            assert c.x == pytest.approx((b2.center.position.x * scale - cx) * 2.0 / fx, abs=1e-3)
            assert c.y == pytest.approx((b2.center.position.y * scale - cy) * 2.0 / fx, abs=1e-3)
            assert d.bbox.size.x == pytest.approx(b2.size_x * scale * 2.0 / fx, rel=1e-3, abs=1e-4)
            assert d.bbox.size.y == pytest.approx(b2.size_y * scale * 2.0 / fx, rel=1e-3, abs=1e-4)
            assert d.bbox.size.z == pytest.approx(0.0, abs=1e-4)  # a wall facing the camera
            assert (hyp.class_id in CLASSES) and d.results[0].pose.pose.position.z == pytest.approx(2.0, abs=1e-4)

        # millimetres work the same; markers come while someone listens
        img, depth, info = frame_with_depth(encoding="16UC1", metres=3.5)
        send(img, depth, info)
        d3 = dets3d.find(lambda d: d.header.stamp == img.header.stamp)
        assert all(d.bbox.center.position.z == pytest.approx(3.5, abs=1e-3) for d in d3.detections)
        client.spin_until(lambda: markers.msgs, 10, "markers")
        m = markers.msgs[-1]
        assert m.markers[0].action == Marker.DELETEALL
        assert sum(mk.type == Marker.CUBE for mk in m.markers) == len(dets3d.msgs[-1].detections)

        # a frame whose depth is 5 s away: 2D only; unusable depth: 2D only, said once; then 3D again
        img, depth, info = frame_with_depth(depth_stamp_offset=5)
        send(img, depth, info, want3d=False)
        img, depth, info = frame_with_depth(encoding="rgb8")
        send(img, depth, info, want3d=False)
        client.spin_for(1.0)
        assert not dets3d.find(lambda d: d.header.stamp.sec >= img.header.stamp.sec - 1)
        img, depth, info = frame_with_depth()
        send(img, depth, info)
        client.spin_until(lambda: "frames_without_depth" in statuses(diags).get("dart_3d: detector", {}), 10, "diag")
        client.spin_for(1.2)
        s = statuses(diags)["dart_3d: detector"]
        assert int(s["frames_without_depth"]) >= 1 and int(s["frames_3d"]) >= 3 and int(s["bad_inputs"]) >= 1
        log = node.log()
        assert log.count("unsupported depth encoding 'rgb8'") == 1 and "no depth image and camera_info within" in log
    finally:
        client.close()
        assert node.stop() in (0, -2, 130), node.log()[-3000:]
