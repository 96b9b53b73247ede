"""COCO box evaluation of the Detector with pycocotools.

Protocols (DART_METHOD.md §7.2, §7.3):
  official  confidence 0, no NMS, top-100 per image over all classes (DART's 55.8 AP protocol)
  nms       confidence 0.01, per-class NMS 0.7, top-300 per image (DART's student protocol)

Every category name is a prompt (or several, from a synonyms file: the category's prompts merge
into one class before NMS, as the node's prompt aliases do). Predictions are cached per image in
JSON lines, so an interrupted run resumes; under torchrun each rank takes every world-size-th image
and rank 0 merges and scores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import io
import json
import logging
import os
import time
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)

PROTOCOLS = {
    "official": dict(confidence_threshold=0.0, nms_iou=1.0, max_detections=100),
    "nms": dict(confidence_threshold=0.01, nms_iou=0.7, nms_mode="per_class", max_detections=300),
}
# Detector settings that change how fast, not what, it predicts: a run may resume with other values.
RUNTIME_FIELDS = (
    "device", "runtime", "cuda_graphs", "compile_kernels", "compile_encdec", "tune_gemms", "max_classes_per_chunk",
    "text_cache", "max_classes", "max_class_name_chars", "load_text_encoder", "cache_dir",
)  # fmt: skip
CHECKPOINT_FIELDS = ("sam3_checkpoint", "backbone_checkpoint", "timm_weights")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclasses.dataclass
class EvalConfig:
    """Evaluation settings (flags of the same names; help in FIELD_HELP)."""

    annotations: str = ""
    images: str = ""
    protocol: str = "official"
    classes_file: str = ""
    synonyms: str = ""
    max_images: int = 0
    out_dir: str = "runs/eval_coco"
    resume: bool = True
    strict_images: bool = False

    FIELD_HELP: ClassVar[Dict[str, str]] = {
        "annotations": "COCO instances JSON (e.g. instances_val2017.json)",
        "images": "folder of the images the annotations' file_name entries name",
        "protocol": "official: confidence 0, no NMS, top-100 per image (SAM3/DART's reported AP); "
        "nms: confidence 0.01, per-class NMS 0.7, top-300 (DART's student protocol)",
        "classes_file": "evaluate only the categories named in this file, one name per line (empty = all)",
        "synonyms": 'JSON {category: [prompt, ...]}: several prompts for a category, e.g. {"person": '
        '["person", "pedestrian"]}; a detection of any counts for the category',
        "max_images": "evaluate the first N image ids in sorted order (0 = all)",
        "out_dir": "output folder: results.json, per_class_ap.png, config.json and the prediction caches; "
        "re-running the same command resumes the run recorded there",
        "resume": "true: continue the run recorded in --out-dir if it is the same run (else stop with the "
        "difference); false: discard its predictions and start over",
        "strict_images": "false: skip unreadable images (excluded from the score, listed in results.json); "
        "true: stop at the first one",
    }

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
    """(class specs, category id of each, {category id: name}) for the categories evaluated.

    A category with synonyms becomes one class described by several prompts
    (``name=prompt|prompt``, :meth:`Detector.set_classes`): its prompts' detections merge into it
    before NMS, so two synonyms finding one object give one box, not a duplicate that would count
    as a false positive. A prompt already used by an earlier category is not used again."""
    from dart_ros.config import format_class_spec

    cats = {}
    for c in coco.loadCats(coco.getCatIds()):
        if not isinstance(c.get("name"), str) or not c["name"].strip():
            raise ValueError(f"annotations: category {c.get('id')!r} has no 'name'")
        cats[c["id"]] = c["name"]
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
        unknown = sorted(set(syn) - set(by_name))
        if unknown:
            raise ValueError(f"synonyms for categories not in the annotations: {unknown}")
        bad = [k for k, v in syn.items() if not isinstance(v, list) or not all(isinstance(p, str) for p in v)]
        if bad:
            raise ValueError(f"synonyms of {bad} must be lists of prompts")
    specs, class_cats, used = [], [], set()
    for n in names:
        prompts = [p for p in dict.fromkeys(" ".join(p.split()) for p in syn.get(n, [n])) if p and p not in used]
        if prompts:
            used.update(prompts)
            specs.append(format_class_spec(n, prompts))
            class_cats.append(by_name[n])
    return specs, class_cats, {by_name[n]: n for n in names}


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


def detections_to_coco(image_id: int, dets, class_cats: Sequence[int]) -> List[dict]:
    out = []
    for (x1, y1, x2, y2), s, c in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.class_ids.tolist(), strict=True):
        out.append(
            {
                "image_id": int(image_id),
                "category_id": int(class_cats[c]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(s),
            }
        )
    return out


def _cache_rows(path: str) -> Dict[int, dict]:
    from dart_ros.run_identity import read_records

    return {int(r["image_id"]): r for r in read_records(path)[0]}


def unknown_category_annotations(coco) -> int:
    """Annotations whose category id the file does not list (pycocotools would ignore them)."""
    known = set(coco.getCatIds())
    return sum(1 for a in coco.dataset.get("annotations", []) if a.get("category_id") not in known)


def run_identity(cfg: EvalConfig, det_cfg, image_ids: Sequence[int], world_size: int) -> dict:
    from dart_ros.run_identity import config_identity, file_fingerprint

    ident = config_identity(cfg, exclude=("out_dir", "resume", "strict_images"), files=("classes_file", "synonyms"))
    ident["annotations"] = file_fingerprint(cfg.annotations)
    ident["images"] = os.path.abspath(cfg.images)
    digest = hashlib.sha1(",".join(map(str, image_ids)).encode()).hexdigest()[:16]
    ident["image_ids"] = f"{len(image_ids)}:{digest}"
    ident["detector"] = config_identity(det_cfg, exclude=RUNTIME_FIELDS + ("classes",), files=CHECKPOINT_FIELDS)
    ident["world_size"] = world_size
    return ident


def run(cfg: EvalConfig, det_cfg) -> Optional[dict]:
    """Predict (resumable, sharded under torchrun) and, on rank 0, score. Returns the results dict."""
    from tqdm import tqdm

    from dart_ros.cliutil import dump
    from dart_ros.detector import Detector
    from dart_ros.run_identity import check_run_identity, open_records
    from dart_ros.training import distributed as D
    from dart_ros.training.data import UnreadableImageError, read_rgb

    cfg.validate()
    env = D.init(det_cfg.device)
    try:
        coco = load_coco(cfg.annotations)
        prompts, class_cats, evaluated = build_vocabulary(coco, cfg.classes_file, cfg.synonyms)
        stray = unknown_category_annotations(coco)
        if stray and env.is_main:
            log.warning("%d annotations have a category id the file does not list: they are not evaluated", stray)
        image_ids = sorted(coco.getImgIds())
        if cfg.max_images:
            image_ids = image_ids[: cfg.max_images]
        det_cfg = dataclasses.replace(
            det_cfg, **PROTOCOLS[cfg.protocol], device=str(env.device) if env.device.type == "cuda" else det_cfg.device
        )
        identity = run_identity(cfg, det_cfg, image_ids, env.world_size)
        predictions = os.path.join(glob.escape(cfg.out_dir), "predictions_rank*.jsonl")
        # all ranks, before any writes
        resuming = check_run_identity(cfg.out_dir, identity, cfg.resume, write=False, state=[predictions])
        D.barrier(env)
        if env.is_main:
            if not resuming:  # another run's outputs must not pass for this one's
                stale = glob.glob(os.path.join(cfg.out_dir, "predictions_rank*.jsonl"))
                for p in stale + [os.path.join(cfg.out_dir, n) for n in ("results.json", "per_class_ap.png")]:
                    if os.path.isfile(p):
                        os.remove(p)
            check_run_identity(cfg.out_dir, identity, resume=False, write=True)
            dump({"evaluation": cfg, "detector": det_cfg}, os.path.join(cfg.out_dir, "config.json"))
        detector = Detector(det_cfg)
        detector.set_classes(prompts)
        D.barrier(env)
        cache_path = os.path.join(cfg.out_dir, f"predictions_rank{env.rank}_of{env.world_size}.jsonl")
        kept, cache = open_records(cache_path, resuming)
        done = {int(r["image_id"]) for r in kept}
        mine = image_ids[env.rank :: env.world_size]
        todo = [i for i in mine if i not in done]
        times = []
        with cache:
            for img_id in tqdm(todo, desc=f"COCO eval (rank {env.rank})", disable=not env.is_main):
                info = coco.loadImgs(img_id)[0]
                path = os.path.join(cfg.images, info["file_name"])
                try:
                    img = read_rgb(path)
                except UnreadableImageError:
                    if cfg.strict_images:
                        raise
                    cache.write(json.dumps({"image_id": img_id, "unreadable": path}) + "\n")
                    cache.flush()
                    continue
                t = time.perf_counter()
                dets = detector.detect(img)
                times.append((time.perf_counter() - t) * 1e3)
                rows = detections_to_coco(img_id, dets, class_cats)
                cache.write(json.dumps({"image_id": img_id, "detections": rows}) + "\n")
                cache.flush()
        D.barrier(env)
        if not env.is_main:
            return None
        shards: Dict[int, dict] = {}
        for r in range(env.world_size):
            shards.update(_cache_rows(os.path.join(cfg.out_dir, f"predictions_rank{r}_of{env.world_size}.jsonl")))
        missing = [i for i in image_ids if i not in shards]
        if missing:  # cannot happen unless a shard file was edited: never score a partial run as whole
            raise RuntimeError(f"{len(missing)} images have no predictions in {cfg.out_dir}; re-run to finish them")
        unreadable = sorted(shards[i]["unreadable"] for i in image_ids if "unreadable" in shards[i])
        scored_ids = [i for i in image_ids if "unreadable" not in shards[i]]
        all_dets = [d for i in scored_ids for d in shards[i]["detections"]]
        scored = evaluate(coco, all_dets, scored_ids, list(evaluated))
        results = {
            "protocol": cfg.protocol,
            "protocol_settings": PROTOCOLS[cfg.protocol],
            "images": len(scored_ids),
            "unreadable_images": unreadable,
            "annotations_with_unknown_category": stray,
            "prompts": prompts,
            "model": detector.model.weights_identity,
            "random_weights": detector.random_weights,
            "stats": scored["stats"],
            "per_class": {evaluated[c]: ap for c, ap in scored["per_class"].items()},
            "ms_per_image_median": float(np.median(times)) if times else None,
            "config": dataclasses.asdict(cfg),
            "detector": dataclasses.asdict(det_cfg),
        }
        if unreadable:
            log.warning("%d unreadable images skipped (listed in results.json)", len(unreadable))
        tmp = os.path.join(cfg.out_dir, "results.json.tmp")
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, os.path.join(cfg.out_dir, "results.json"))
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
