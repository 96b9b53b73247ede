"""COCO box evaluation of the Detector with pycocotools.

Protocols (DART_METHOD.md §7.2, §7.3):
  official  confidence 0, no NMS, top-100 per image over all classes (DART's 55.8 AP protocol)
  nms       confidence 0.01, per-class NMS 0.7, top-300 per image (DART's student protocol)

Every category name is a prompt (or several, from a synonyms file; any synonym's detection counts
for its category). Predictions are cached per image in JSON lines, so an interrupted run resumes;
under torchrun each rank takes every world-size-th image and rank 0 merges and scores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)

PROTOCOLS = {
    "official": dict(confidence_threshold=0.0, nms_iou=1.0, max_detections=100),
    "nms": dict(confidence_threshold=0.01, nms_iou=0.7, nms_mode="per_class", max_detections=300),
}
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclasses.dataclass
class EvalConfig:
    """annotations: instances JSON; images: their directory; protocol: official | nms;
    classes_file: evaluate only these category names (one per line); synonyms: JSON
    {category: [prompt, ...]}; max_images: first N image ids (sorted), 0 = all."""

    annotations: str = ""
    images: str = ""
    protocol: str = "official"
    classes_file: str = ""
    synonyms: str = ""
    max_images: int = 0
    out_dir: str = "runs/eval_coco"
    resume: bool = True

    def validate(self) -> "EvalConfig":
        if not self.annotations or not os.path.isfile(self.annotations):
            raise ValueError(f"annotations file not found: {self.annotations!r}")
        if not os.path.isdir(self.images):
            raise ValueError(f"image directory not found: {self.images!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {list(PROTOCOLS)}")
        return self


def load_coco(path: str):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        return COCO(path)


def build_vocabulary(coco, classes_file: str = "", synonyms: str = "") -> Tuple[List[str], List[int], Dict[int, str]]:
    """(prompts, category id of each prompt, {category id: name}) for the categories evaluated."""
    cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    by_name = {n: i for i, n in cats.items()}
    names = list(cats.values())
    if classes_file:
        with open(classes_file) as f:
            wanted = [ln.strip() for ln in f if ln.strip()]
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            raise ValueError(f"classes not in the annotations: {unknown}; known: {sorted(by_name)}")
        names = wanted
    syn = {}
    if synonyms:
        with open(synonyms) as f:
            syn = json.load(f)
    prompts, prompt_cats = [], []
    for n in names:
        for p in syn.get(n, [n]):
            if p not in prompts:
                prompts.append(p)
                prompt_cats.append(by_name[n])
    return prompts, prompt_cats, {by_name[n]: n for n in names}


def evaluate(coco_gt, detections: List[dict], image_ids: Sequence[int], cat_ids: Sequence[int]) -> dict:
    """COCOeval bbox on ``detections`` ({image_id, category_id, bbox [x, y, w, h], score}).

    Returns the 12 summary statistics and the per-category AP (IoU .50:.95, all areas, 100 dets).
    """
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return {"stats": dict.fromkeys(STAT_NAMES, 0.0), "per_class": {int(c): 0.0 for c in cat_ids}, "summary": ""}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco_gt.loadRes(list(detections))
    ev = COCOeval(coco_gt, dt, "bbox")
    ev.params.imgIds = list(image_ids)
    ev.params.catIds = list(cat_ids)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # (T, R, K, A, M)
    per_class = {}
    for k, cid in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        per_class[int(cid)] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
    return {
        "stats": dict(zip(STAT_NAMES, map(float, ev.stats), strict=True)),
        "per_class": per_class,
        "summary": buf.getvalue(),
    }


def detections_to_coco(image_id: int, dets, prompt_cats: Sequence[int]) -> List[dict]:
    out = []
    for (x1, y1, x2, y2), s, c in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.class_ids.tolist(), strict=True):
        out.append(
            {
                "image_id": int(image_id),
                "category_id": int(prompt_cats[c]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(s),
            }
        )
    return out


def _read_cache(path: str) -> Dict[int, List[dict]]:
    done = {}
    if os.path.isfile(path):
        with open(path) as f:
            for ln in f:
                try:
                    row = json.loads(ln)
                except json.JSONDecodeError:  # a line cut by a killed run
                    continue
                done[int(row["image_id"])] = row["detections"]
    return done


def run(cfg: EvalConfig, det_cfg) -> Optional[dict]:
    """Predict (resumable, sharded under torchrun) and, on rank 0, score. Returns the results dict."""
    from tqdm import tqdm

    from dart_ros.detector import Detector
    from dart_ros.training import distributed as D
    from dart_ros.training.data import read_rgb

    cfg.validate()
    env = D.init(det_cfg.device)
    try:
        coco = load_coco(cfg.annotations)
        prompts, prompt_cats, evaluated = build_vocabulary(coco, cfg.classes_file, cfg.synonyms)
        image_ids = sorted(coco.getImgIds())
        if cfg.max_images:
            image_ids = image_ids[: cfg.max_images]
        det_cfg = dataclasses.replace(
            det_cfg, **PROTOCOLS[cfg.protocol], device=str(env.device) if env.device.type == "cuda" else det_cfg.device
        )
        detector = Detector(det_cfg)
        detector.set_classes(prompts)
        if env.is_main:
            os.makedirs(cfg.out_dir, exist_ok=True)
        D.barrier(env)
        cache_path = os.path.join(cfg.out_dir, f"predictions_rank{env.rank}_of{env.world_size}.jsonl")
        done = _read_cache(cache_path) if cfg.resume else {}
        mine = image_ids[env.rank :: env.world_size]
        todo = [i for i in mine if i not in done]
        times = []
        with open(cache_path, "a" if cfg.resume else "w") as cache:
            for img_id in tqdm(todo, desc=f"COCO eval (rank {env.rank})", disable=not env.is_main):
                info = coco.loadImgs(img_id)[0]
                img = read_rgb(os.path.join(cfg.images, info["file_name"]))
                t = time.perf_counter()
                dets = detector.detect(img)
                times.append((time.perf_counter() - t) * 1e3)
                rows = detections_to_coco(img_id, dets, prompt_cats)
                cache.write(json.dumps({"image_id": img_id, "detections": rows}) + "\n")
                cache.flush()
        D.barrier(env)
        if not env.is_main:
            return None
        all_dets: List[dict] = []
        for r in range(env.world_size):
            shard = _read_cache(os.path.join(cfg.out_dir, f"predictions_rank{r}_of{env.world_size}.jsonl"))
            all_dets += [d for i in image_ids if i in shard for d in shard[i]]
        scored = evaluate(coco, all_dets, image_ids, list(evaluated))
        results = {
            "protocol": cfg.protocol,
            "protocol_settings": PROTOCOLS[cfg.protocol],
            "images": len(image_ids),
            "prompts": prompts,
            "model": detector.model.weights_identity,
            "random_weights": detector.random_weights,
            "stats": scored["stats"],
            "per_class": {evaluated[c]: ap for c, ap in scored["per_class"].items()},
            "ms_per_image_median": float(np.median(times)) if times else None,
            "config": dataclasses.asdict(cfg),
            "detector": dataclasses.asdict(det_cfg),
        }
        with open(os.path.join(cfg.out_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        plot_per_class(results["per_class"], os.path.join(cfg.out_dir, "per_class_ap.png"))
        return results
    finally:
        D.cleanup(env)


def plot_per_class(per_class: Dict[str, float], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(per_class.items(), key=lambda kv: -np.nan_to_num(kv[1], nan=-1))
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(items) + 2), 4))
    ax.bar(range(len(items)), [np.nan_to_num(v) for _, v in items])
    ax.set_xticks(range(len(items)), [k for k, _ in items], rotation=90, fontsize=6)
    ax.set(ylabel="AP (IoU .50:.95)", title="per-class AP")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(results: dict) -> str:
    lines = ["  ".join(f"{k}={results['stats'][k]:.3f}" for k in STAT_NAMES[:6]), "", f"{'class':24s} AP"]
    for name, ap in sorted(results["per_class"].items(), key=lambda kv: -np.nan_to_num(kv[1], nan=-1)):
        lines.append(f"{name:24s} {ap:.3f}")
    return "\n".join(lines)
