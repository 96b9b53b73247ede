"""Auto-labelling: run the Detector over a folder of images or a rosbag image topic and write COCO.

The common use of an open-vocabulary detector: bootstrap a dataset for a closed-set model. Frames
from a bag are written as JPEG files next to the annotations, so the output is a self-contained
COCO dataset (``images/`` + ``annotations.json``) that pycocotools and training tools load.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Iterator, List, Tuple

import numpy as np

log = logging.getLogger(__name__)


@dataclasses.dataclass
class AutolabelConfig:
    """source: image folder, or a rosbag (directory or .mcap/.db3) with ``topic``;
    every_nth: keep every n-th bag frame; max_frames: 0 = all; out_dir: output dataset;
    merge_groups: cross-class NMS groups by name, e.g. ``"car,truck,bus;person,rider"``."""

    source: str = ""
    topic: str = ""
    every_nth: int = 1
    max_frames: int = 0
    out_dir: str = "runs/autolabel"
    merge_groups: str = ""
    merge_iou: float = 0.5


def frames_from_folder(path: str) -> Iterator[Tuple[str, np.ndarray, str]]:
    from dart_ros.training.data import list_images, read_rgb

    for p in list_images(path):
        yield os.path.relpath(p, path), read_rgb(p), "rgb"


def frames_from_bag(path: str, topic: str) -> Iterator[Tuple[str, np.ndarray, str]]:
    """(name, HxWxC uint8, layout) of each sensor_msgs/Image or CompressedImage on ``topic``."""
    from pathlib import Path

    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from dart_ros.image_decode import compressed_to_array, image_to_array

    with AnyReader([Path(path)], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            raise ValueError(
                f"topic {topic!r} not in {path!r}; topics: {sorted({c.topic for c in reader.connections})}"
            )
        for i, (conn, stamp, raw) in enumerate(reader.messages(connections=conns)):
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.msgtype.endswith("CompressedImage"):
                arr, layout = compressed_to_array(msg)
            else:
                arr, layout = image_to_array(msg)
            yield f"frame_{i:06d}_{stamp}.jpg", arr, layout


def run(cfg: AutolabelConfig, det_cfg) -> dict:
    import cv2
    from tqdm import tqdm

    from dart_ros.config import parse_name_groups
    from dart_ros.detector import Detector
    from dart_ros.image_decode import to_rgb

    if not cfg.source or not os.path.exists(cfg.source):
        raise ValueError(f"source not found: {cfg.source!r}")
    is_bag = not os.path.isdir(cfg.source) or any(
        f.endswith(("metadata.yaml", ".mcap", ".db3")) for f in os.listdir(cfg.source)
    )
    if is_bag and not cfg.topic:
        raise ValueError("a rosbag source needs --topic")
    detector = Detector(det_cfg)
    names = detector.set_classes(det_cfg.classes)
    groups = parse_name_groups(cfg.merge_groups)
    if groups:
        index = {n: i for i, n in enumerate(names)}
        detector.update(
            nms_mode="grouped",
            nms_iou=cfg.merge_iou,
            nms_groups=tuple(tuple(index[n] for n in g if n in index) for g in groups),
        )
    image_dir = os.path.join(cfg.out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    frames = frames_from_bag(cfg.source, cfg.topic) if is_bag else frames_from_folder(cfg.source)
    images: List[dict] = []
    annotations: List[dict] = []
    for k, (name, arr, layout) in enumerate(tqdm(frames, desc="auto-labelling")):
        if k % cfg.every_nth:
            continue
        if cfg.max_frames and len(images) >= cfg.max_frames:
            break
        dets = detector.detect(arr, color=layout)
        if is_bag:
            cv2.imwrite(os.path.join(image_dir, name), to_rgb(arr, layout)[:, :, ::-1])
            file_name = os.path.join("images", name)
        else:
            file_name = os.path.relpath(os.path.join(cfg.source, name), cfg.out_dir)
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file_name, "height": int(arr.shape[0]), "width": int(arr.shape[1])})
        for (x1, y1, x2, y2), s, c in zip(
            dets.boxes.tolist(), dets.scores.tolist(), dets.class_ids.tolist(), strict=True
        ):
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": c + 1,
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "score": float(s),
                }
            )
    dataset = {
        "info": {
            "description": "auto-labelled by dart_ros",
            "model": detector.model.weights_identity,
            "random_weights": detector.random_weights,
            "threshold": detector.config.confidence_threshold,
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(names)],
    }
    path = os.path.join(cfg.out_dir, "annotations.json")
    with open(path, "w") as f:
        json.dump(dataset, f)
    return {"annotations": path, "images": len(images), "boxes": len(annotations)}
