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
    not know: it stays empty (zero, identity orientation). ``id`` stays empty (no tracking).
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
