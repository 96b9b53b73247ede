"""Auto-labelling: run the Detector over a folder of images or a rosbag image topic and write COCO.

The common use of an open-vocabulary detector: bootstrap a dataset for a closed-set model. Frames
from a bag are written as JPEG files next to the annotations, so the output is a self-contained
COCO dataset (``images/`` + ``annotations.json``) that pycocotools and training tools load.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from typing import Callable, ClassVar, Dict, Iterator, List, Tuple

import numpy as np

log = logging.getLogger(__name__)


@dataclasses.dataclass
class AutolabelConfig:
    """Auto-labelling settings (flags of the same names; help in FIELD_HELP)."""

    source: str = ""
    topic: str = ""
    every_nth: int = 1
    max_frames: int = 0
    out_dir: str = "runs/autolabel"
    merge_groups: str = ""
    merge_iou: float = 0.5
    resume: bool = True
    strict_images: bool = False

    FIELD_HELP: ClassVar[Dict[str, str]] = {
        "source": "an image folder (searched recursively), or a rosbag2 (its folder, or a .mcap / .db3 file)",
        "topic": "the bag's image topic (sensor_msgs/Image or CompressedImage); required for a bag",
        "every_nth": "label every n-th image or frame (1 = all)",
        "max_frames": "stop after labelling this many images (0 = all); raising it later continues the run",
        "out_dir": "output dataset: annotations.json (COCO, with scores) and images/ for bag frames; "
        "labels.jsonl keeps finished images so a re-run of the same command resumes",
        "merge_groups": "classes suppressing each other in NMS, by name: groups separated by ';', names by ',' "
        '(e.g. "car,truck,bus;person,rider"); every name must be one of --classes',
        "merge_iou": "IoU above which boxes of one merge group suppress each other",
        "resume": "true: continue the run recorded in --out-dir if it is the same run (else stop with the "
        "difference); false: discard it and start over",
        "strict_images": "false: skip unreadable images (listed in the summary); true: stop at the first one",
    }


LABELS = "labels.jsonl"  # one record per source image or frame considered, in order


def frames_from_folder(path: str) -> Iterator[Tuple[str, Callable[[], Tuple[np.ndarray, str]]]]:
    """(name, loader) per image: an image is decoded only when it is labelled (not on resume)."""
    from dart_ros.training.data import list_images, read_rgb

    for p in list_images(path):
        yield os.path.relpath(p, path), (lambda p=p: (read_rgb(p), "rgb"))


def frames_from_bag(path: str, topic: str) -> Iterator[Tuple[str, Callable[[], Tuple[np.ndarray, str]]]]:
    """(name, loader) of each sensor_msgs/Image or CompressedImage on ``topic``."""
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

            def load(conn=conn, raw=raw):
                msg = reader.deserialize(raw, conn.msgtype)
                if conn.msgtype.endswith("CompressedImage"):
                    return compressed_to_array(msg)
                return image_to_array(msg)

            yield f"frame_{i:06d}_{stamp}.jpg", load


def _source_identity(source: str, is_bag: bool) -> str:
    from dart_ros.run_identity import dataset_fingerprint, file_fingerprint
    from dart_ros.training.data import list_images

    if not is_bag:
        return dataset_fingerprint(list_images(source))
    files = [source] if os.path.isfile(source) else sorted(os.path.join(source, f) for f in os.listdir(source))
    return ";".join(f"{os.path.basename(f)}={file_fingerprint(f)}" for f in files if os.path.isfile(f))


def run(cfg: AutolabelConfig, det_cfg) -> dict:
    import cv2
    from tqdm import tqdm

    from dart_ros.cliutil import dump
    from dart_ros.config import parse_class_spec, parse_name_groups
    from dart_ros.detector import Detector
    from dart_ros.evaluation.coco import CHECKPOINT_FIELDS, RUNTIME_FIELDS
    from dart_ros.image_decode import to_rgb
    from dart_ros.run_identity import check_run_identity, config_identity, open_records

    if not cfg.source or not os.path.exists(cfg.source):
        raise ValueError(f"source not found: {cfg.source!r}")
    if cfg.every_nth < 1 or cfg.max_frames < 0:
        raise ValueError("--every-nth must be >= 1 and --max-frames >= 0")
    is_bag = not os.path.isdir(cfg.source) or any(
        f.endswith(("metadata.yaml", ".mcap", ".db3")) for f in os.listdir(cfg.source)
    )
    if is_bag and not cfg.topic:
        raise ValueError("a rosbag source needs --topic")
    groups = parse_name_groups(cfg.merge_groups)
    class_names = [parse_class_spec(c)[0] for c in det_cfg.classes]
    unknown = sorted({n for g in groups for n in g} - set(class_names))
    if unknown:
        raise ValueError(f"--merge-groups names {unknown} are not among --classes {class_names}")

    identity = config_identity(cfg, exclude=("out_dir", "max_frames", "resume", "strict_images"))
    identity["source"] = _source_identity(cfg.source, is_bag)
    identity["detector"] = config_identity(det_cfg, exclude=RUNTIME_FIELDS, files=CHECKPOINT_FIELDS)
    labels_path = os.path.join(cfg.out_dir, LABELS)
    resuming = check_run_identity(cfg.out_dir, identity, cfg.resume, write=False, state=[glob.escape(labels_path)])
    check_run_identity(cfg.out_dir, identity, resume=False, write=True)
    dump({"autolabel": cfg, "detector": det_cfg}, os.path.join(cfg.out_dir, "config.json"))

    detector = Detector(det_cfg)
    names = detector.set_classes(det_cfg.classes, det_cfg.class_thresholds)
    if groups:
        index = {n: i for i, n in enumerate(names)}
        detector.update(
            nms_mode="grouped", nms_iou=cfg.merge_iou, nms_groups=tuple(tuple(index[n] for n in g) for g in groups)
        )
    image_dir = os.path.join(cfg.out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    records, out = open_records(labels_path, resuming)
    done = {r["frame"] for r in records}
    labelled = sum(1 for r in records if "detections" in r)
    frames = frames_from_bag(cfg.source, cfg.topic) if is_bag else frames_from_folder(cfg.source)
    with out, tqdm(desc="auto-labelling", unit="image", initial=labelled) as progress:
        for k, (name, load) in enumerate(frames):
            if k % cfg.every_nth or k in done:
                continue
            if cfg.max_frames and labelled >= cfg.max_frames:
                break
            try:
                arr, layout = load()
            except ValueError as e:  # UnreadableImageError, BadImageError, ImageFormatError
                if cfg.strict_images:
                    raise
                out.write(json.dumps({"frame": k, "name": name, "unreadable": str(e)}) + "\n")
                out.flush()
                continue
            dets = detector.detect(arr, color=layout)
            if is_bag:
                path = os.path.join(image_dir, name)
                cv2.imwrite(path + ".tmp.jpg", to_rgb(arr, layout)[:, :, ::-1])
                os.replace(path + ".tmp.jpg", path)  # the record below never names a half-written file
                file_name = os.path.join("images", name)
            else:
                file_name = os.path.relpath(os.path.join(cfg.source, name), cfg.out_dir)
            boxes = [
                [x1, y1, x2 - x1, y2 - y1, float(s), int(c)]
                for (x1, y1, x2, y2), s, c in zip(
                    dets.boxes.tolist(), dets.scores.tolist(), dets.class_ids.tolist(), strict=True
                )
            ]
            row = {"frame": k, "file_name": file_name, "height": int(arr.shape[0]), "width": int(arr.shape[1])}
            out.write(json.dumps({**row, "detections": boxes}) + "\n")
            out.flush()
            labelled += 1
            progress.update(1)
    return write_coco(cfg.out_dir, names, detector)


def write_coco(out_dir: str, names: List[str], detector) -> dict:
    """annotations.json from the run's records, written atomically."""
    from dart_ros.run_identity import read_records

    records = sorted(read_records(os.path.join(out_dir, LABELS))[0], key=lambda r: r["frame"])
    images: List[dict] = []
    annotations: List[dict] = []
    unreadable = [r.get("name", "") + ": " + r["unreadable"] for r in records if "unreadable" in r]
    for r in records:
        if "detections" not in r:
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": r["file_name"], "height": r["height"], "width": r["width"]})
        for x, y, w, h, score, c in r["detections"]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": c + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "score": score,
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
    path = os.path.join(out_dir, "annotations.json")
    with open(path + ".tmp", "w") as f:
        json.dump(dataset, f)
    os.replace(path + ".tmp", path)
    if unreadable:
        log.warning("%d unreadable images skipped", len(unreadable))
    return {"annotations": path, "images": len(images), "boxes": len(annotations), "unreadable_images": unreadable}
