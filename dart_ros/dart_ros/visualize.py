"""Drawing detections on an image (numpy + OpenCV), for the annotated topic and the tools."""

from __future__ import annotations

import colorsys

import numpy as np


def class_color(class_id: int) -> tuple:
    """A stable, well-separated RGB colour per class id (golden-ratio hue steps)."""
    h = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(rgb: np.ndarray, dets, thickness: int = 2, track_ids=None) -> np.ndarray:
    """A copy of the HxWx3 RGB image with boxes, class names and scores (and track IDs) drawn."""
    import cv2

    out = np.ascontiguousarray(rgb).copy()
    scale = max(0.4, min(out.shape[:2]) / 900.0)
    track_ids = track_ids if track_ids is not None else [None] * len(dets)
    for (x1, y1, x2, y2), score, cid, tid in zip(
        dets.boxes.tolist(), dets.scores.tolist(), dets.class_ids.tolist(), track_ids, strict=True
    ):
        color = class_color(cid)
        p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(out, p1, p2, color, thickness)
        label = f"{dets.class_names[cid]} {score:.2f}" + (f" #{tid}" if tid is not None else "")
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = max(p1[1], th + base)
        cv2.rectangle(out, (p1[0], ty - th - base), (p1[0] + tw, ty), color, -1)
        cv2.putText(out, label, (p1[0], ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out
