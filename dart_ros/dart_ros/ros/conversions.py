"""Conversions between the Detector's numpy outputs and ROS messages (no cv_bridge needed).

Decoding of incoming images lives in :mod:`dart_ros.image_decode` (shared with the offline tools);
tensors stay behind the Detector.
"""

from __future__ import annotations

import numpy as np


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


def array_to_compressed_msg(rgb: np.ndarray, header, quality: int = 80):
    """An RGB image as a JPEG sensor_msgs/CompressedImage (format ``rgb8; jpeg compressed bgr8``,
    as image_transport's compressed publisher writes it)."""
    import cv2
    from sensor_msgs.msg import CompressedImage

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    msg = CompressedImage()
    msg.header = header
    msg.format = "rgb8; jpeg compressed bgr8"
    msg.data = buf.tobytes()
    return msg


def detections_to_msg(dets, header, track_ids=None):
    """:class:`dart_ros.types.Detections` -> vision_msgs/Detection2DArray with ``header`` copied.

    ``class_id`` is the class name; bbox center/size are source-image pixels. The hypothesis pose
    is metric (metres in the camera frame) by the message's definition, which a 2D detector does
    not know: it stays empty (zero, identity orientation). ``id`` is the track ID, empty without tracking.
    """
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    out = Detection2DArray()
    out.header = header
    names = dets.class_names
    track_ids = track_ids if track_ids is not None else [None] * len(dets)
    for (x1, y1, x2, y2), score, cid, tid in zip(
        dets.boxes.tolist(), dets.scores.tolist(), dets.class_ids.tolist(), track_ids, strict=True
    ):
        d = Detection2D()
        d.header = header
        d.id = "" if tid is None else str(tid)  # the track ID (empty: not tracked)
        d.bbox.center.position.x = (x1 + x2) / 2.0
        d.bbox.center.position.y = (y1 + y2) / 2.0
        d.bbox.size_x = x2 - x1
        d.bbox.size_y = y2 - y1
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = names[cid]
        hyp.hypothesis.score = float(score)
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


def _set_point(point, xyz) -> None:
    point.x, point.y, point.z = (float(v) for v in xyz)


def detections_3d_msg(dets, boxes3d, header, track_ids=None):
    """vision_msgs/Detection3DArray of the detections that have a 3D box (``boxes3d[i]``: a
    :class:`dart_ros.depth3d.Box3D` or None). Poses are in ``header.frame_id``, the camera's optical
    frame: box centre and hypothesis pose alike; orientation identity (axis-aligned in that frame)."""
    from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

    out = Detection3DArray()
    out.header = header
    track_ids = track_ids if track_ids is not None else [None] * len(dets)
    for box, score, cid, tid in zip(boxes3d, dets.scores.tolist(), dets.class_ids.tolist(), track_ids, strict=True):
        if box is None:
            continue
        d = Detection3D()
        d.header = header
        d.id = "" if tid is None else str(tid)
        _set_point(d.bbox.center.position, box.center)
        d.bbox.size.x, d.bbox.size.y, d.bbox.size.z = (float(v) for v in box.size)
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = dets.class_names[cid]
        hyp.hypothesis.score = float(score)
        _set_point(hyp.pose.pose.position, box.center)
        d.results.append(hyp)
        out.detections.append(d)
    return out


def markers_3d_msg(detections_3d, class_ids, lifetime_s: float = 0.5):
    """visualization_msgs/MarkerArray for RViz (which shows it without plugins): a translucent cube
    per 3D detection and its label above it. ``class_ids[i]`` colours detection ``i``; every
    message starts by deleting the previous frame's markers."""
    from visualization_msgs.msg import Marker, MarkerArray

    from dart_ros.visualize import class_color

    out = MarkerArray()
    clear = Marker()
    clear.header = detections_3d.header
    clear.action = Marker.DELETEALL
    out.markers.append(clear)
    secs = int(lifetime_s)
    for i, (d, cid) in enumerate(zip(detections_3d.detections, class_ids, strict=True)):
        r, g, b = (c / 255.0 for c in class_color(int(cid)))
        hyp = d.results[0].hypothesis
        for kind in (Marker.CUBE, Marker.TEXT_VIEW_FACING):
            m = Marker()
            m.header = detections_3d.header
            m.ns = "dart_3d" if kind == Marker.CUBE else "dart_3d_labels"
            m.id = i
            m.type, m.action = kind, Marker.ADD
            c = d.bbox.center.position
            _set_point(m.pose.position, (c.x, c.y, c.z))  # a copy: the text marker moves its own
            m.lifetime.sec, m.lifetime.nanosec = secs, int((lifetime_s - secs) * 1e9)
            m.color.r, m.color.g, m.color.b = r, g, b
            if kind == Marker.CUBE:
                m.color.a = 0.4
                # a surface facing the camera has no depth extent: keep the cube visible
                m.scale.x, m.scale.y, m.scale.z = d.bbox.size.x, d.bbox.size.y, max(d.bbox.size.z, 0.02)
            else:
                m.color.a = 1.0
                m.scale.z = max(0.05, 0.15 * d.bbox.size.y)
                m.pose.position.y = c.y - d.bbox.size.y / 2 - m.scale.z  # above the cube (y points down)
                m.text = f"{hyp.class_id} {hyp.score:.2f}" + (f" #{d.id}" if d.id else "")
            out.markers.append(m)
    return out
