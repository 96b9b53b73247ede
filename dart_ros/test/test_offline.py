"""Offline tools on tiny data and tiny random models (CPU): distillation (loss, checkpoints,
resume, torchrun), pruning (search, checkpoint in the Detector), COCO evaluation (metrics equal
pycocotools', category mapping, resume), auto-labelling (valid COCO from folders and bags)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import make_detector, random_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATS = {1: "person", 3: "car", 7: "dog"}  # non-contiguous ids, as in COCO


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny COCO-format dataset: images with coloured boxes and their instances JSON."""
    import cv2

    root = tmp_path_factory.mktemp("coco")
    rng = np.random.default_rng(7)
    images, anns = [], []
    for i in range(6):
        h, w = int(rng.integers(90, 160)), int(rng.integers(100, 200))
        img = random_image(rng, h, w)
        for k in range(2):
            x, y = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            bw, bh = int(rng.integers(15, 40)), int(rng.integers(15, 40))
            cv2.rectangle(img, (x, y), (x + bw, y + bh), (255, 0, 0) if k else (0, 255, 0), -1)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 100 + i,
                    "category_id": list(CATS)[(i + k) % 3],
                    "bbox": [x, y, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
        name = f"img_{i}.jpg"
        cv2.imwrite(str(root / name), img[:, :, ::-1])
        images.append({"id": 100 + i, "file_name": name, "height": h, "width": w})
    ann_path = root / "instances.json"
    ann_path.write_text(
        json.dumps(
            {"images": images, "annotations": anns, "categories": [{"id": k, "name": v} for k, v in CATS.items()]}
        )
    )
    return root, ann_path, anns


def distill_cfg(images, out, **kw):
    from dart_ros.training.distill import DistillConfig

    base = dict(
        images=str(images),
        out_dir=str(out),
        teacher="tiny",
        student="tiny_student",
        batch_size=2,
        workers=0,
        device="cpu",
        epochs=4,
        log_every=1,
        save_every_steps=2,
        lr=3e-3,
    )
    base.update(kw)
    return DistillConfig(**base)


def read_log(out):
    return [json.loads(ln) for ln in open(os.path.join(out, "train_log.jsonl"))]


def test_distillation_loss_decreases_and_checkpoint_loads(dataset, tmp_path):
    from dart_ros.model.registry import build_model
    from dart_ros.training.distill import run

    images, _, _ = dataset
    out = tmp_path / "d"
    summary = run(distill_cfg(images, out, epochs=6))
    assert summary["steps"] == 18
    losses = [r["loss"] for r in read_log(out)]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    for name in ("adapter_epoch1.pt", "adapter_epoch6.pt", "adapter_final.pt", "loss.png", "summary.json"):
        assert (out / name).exists(), name
    ck = torch.load(out / "adapter_epoch6.pt", weights_only=True)
    assert {
        "epoch",
        "loss",
        "adapter_state_dict",
        "student_state_dict",
        "optimizer_state_dict",
        "scheduler_state_dict",
        "scaler_state_dict",
    } <= set(ck)
    model = build_model("tiny_student", backbone_checkpoint=str(out / "adapter_final.pt"))
    final = torch.load(out / "adapter_final.pt", weights_only=True)["student_state_dict"]
    for k, v in model.vision.state_dict().items():
        torch.testing.assert_close(v, final[k])


def test_distillation_resume_continues_exactly(dataset, tmp_path):
    from dart_ros.training.distill import run

    images, _, _ = dataset
    straight = run(distill_cfg(images, tmp_path / "a", epochs=2))
    first = run(distill_cfg(images, tmp_path / "b", epochs=2, stop_after_steps=4))
    assert first == {"steps": 4, "stopped_early": True, "final_loss": pytest.approx(first["final_loss"])}
    second = run(distill_cfg(images, tmp_path / "b", epochs=2))
    assert second["steps"] == straight["steps"] == 6
    assert [r["step"] for r in read_log(tmp_path / "b")] == [1, 2, 3, 4, 5, 6]
    a = torch.load(tmp_path / "a" / "adapter_final.pt", weights_only=True)["student_state_dict"]
    b = torch.load(tmp_path / "b" / "adapter_final.pt", weights_only=True)["student_state_dict"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)


def test_distillation_under_torchrun_two_processes(dataset, tmp_path):
    images, _, _ = dataset
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        os.path.join(ROOT, "offline", "distill.py"),
        "--images",
        str(images),
        "--teacher",
        "tiny",
        "--student",
        "tiny_student",
        "--out-dir",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "1",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--level-weights",
        "0",
        "0",
        "1",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6 and summary["levels"] == [2]


def test_pruning_search_and_checkpoint(dataset, tmp_path):
    from dart_ros.model.arch import TINY
    from dart_ros.training.prune import PruneConfig, run

    images, _, _ = dataset
    out = tmp_path / "p"
    summary = run(
        PruneConfig(
            images=str(images),
            out_dir=str(out),
            backbone="tiny",
            num_remove=2,
            mode="subblock",
            calibration_images=4,
            epochs=1,
            batch_size=2,
            workers=0,
            device="cpu",
        )
    )
    report = json.loads((out / "prune_report.json").read_text())
    removed = [tuple(c) for c in report["greedy"][-1]["removed"]]
    assert len(removed) == 2 and not any(i in TINY.global_blocks for i, _ in removed)
    assert len(report["single"]) == 2 * (TINY.depth - len(TINY.global_blocks))
    assert report["greedy"][0]["mse"] <= report["greedy"][1]["mse"]
    assert (out / "prune_report.png").exists()
    ck = torch.load(out / "pruned_final.pt", weights_only=True)
    assert ck["skip_blocks"] == summary["skip_blocks"] and ck["mask_blocks"] == summary["mask_blocks"]
    det = make_detector("tiny", backbone_checkpoint=str(out / "pruned_final.pt"), confidence_threshold=0.0)
    det.set_classes(["person"])
    assert len(det.detect(random_image(np.random.default_rng(0)))) > 0


def test_pruning_of_global_blocks_is_refused(dataset, tmp_path):
    from dart_ros.training.prune import PruneConfig, run

    images, _, _ = dataset
    with pytest.raises(ValueError, match="global"):
        run(
            PruneConfig(
                images=str(images),
                out_dir=str(tmp_path),
                backbone="tiny",
                skip_blocks=(1,),
                epochs=1,
                batch_size=2,
                workers=0,
                device="cpu",
            )
        )


def test_coco_metrics_equal_pycocotools(dataset):
    from pycocotools.cocoeval import COCOeval

    from dart_ros.evaluation.coco import evaluate, load_coco

    _, ann_path, anns = dataset
    gt = load_coco(str(ann_path))
    ids = sorted(gt.getImgIds())
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0} for a in anns
    ]
    res = evaluate(gt, perfect, ids, list(CATS))
    assert res["stats"]["AP"] == pytest.approx(1.0) and all(v == pytest.approx(1.0) for v in res["per_class"].values())
    rng = np.random.default_rng(3)
    shaky = [
        {**d, "bbox": [v + float(rng.normal(0, 3)) for v in d["bbox"]], "score": float(rng.uniform())} for d in perfect
    ]
    shaky.append({"image_id": ids[0], "category_id": 3, "bbox": [1, 1, 5, 5], "score": 0.99})  # a false positive
    res = evaluate(gt, shaky, ids, list(CATS))
    ev = COCOeval(gt, gt.loadRes(shaky), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert res["stats"]["AP"] == pytest.approx(ev.stats[0]) and 0 < res["stats"]["AP"] < 1
    assert res["stats"]["AP50"] == pytest.approx(ev.stats[1])


def test_coco_eval_end_to_end_maps_categories_and_resumes(dataset, tmp_path):
    from dart_ros.config import DetectorConfig
    from dart_ros.evaluation.coco import EvalConfig, run

    images, ann_path, _ = dataset
    cfg = EvalConfig(annotations=str(ann_path), images=str(images), out_dir=str(tmp_path), max_images=4)
    results = run(cfg, DetectorConfig(backbone="tiny", device="cpu"))
    assert results["images"] == 4 and set(results["per_class"]) == set(CATS.values())
    assert results["prompts"] == ["person", "car", "dog"] and results["random_weights"]
    shard = tmp_path / "predictions_rank0_of1.jsonl"
    rows = [json.loads(ln) for ln in shard.read_text().splitlines()]
    cats = {d["category_id"] for r in rows for d in r["detections"]}
    assert cats and cats <= set(CATS)
    assert all(len(r["detections"]) <= 100 for r in rows)  # official protocol: top-100
    again = run(cfg, DetectorConfig(backbone="tiny", device="cpu"))
    assert again["ms_per_image_median"] is None  # everything came from the cache
    assert len(shard.read_text().splitlines()) == 4 and again["stats"] == results["stats"]


def test_coco_synonyms_merge_into_their_category_as_prompt_aliases(tmp_path, rng):
    """--synonyms: a category's prompts become one aliased class (merged before NMS), a prompt used
    by an earlier category is not reused, and the detections carry the category ids."""
    from dart_ros.evaluation.coco import build_vocabulary, detections_to_coco, load_coco

    ann = tmp_path / "ann.json"
    cats = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 7, "name": "truck"}]
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    syn = tmp_path / "syn.json"
    syn.write_text(json.dumps({"person": ["person", "pedestrian", "worker"], "car": ["car", "worker", "auto"]}))
    specs, class_cats, evaluated = build_vocabulary(load_coco(str(ann)), synonyms=str(syn))
    assert specs == ["person=person|pedestrian|worker", "car=car|auto", "truck"]
    assert class_cats == [1, 3, 7] and evaluated == {1: "person", 3: "car", 7: "truck"}
    det = make_detector("tiny", confidence_threshold=0.0, max_detections=30)
    assert det.set_classes(specs) == ["person", "car", "truck"]
    dets = det.detect(random_image(rng))
    rows = detections_to_coco(5, dets, class_cats)
    assert len(rows) == len(dets) > 0 and {r["category_id"] for r in rows} <= {1, 3, 7}
    syn.write_text(json.dumps({"person": "pedestrian"}))
    with pytest.raises(ValueError, match="must be lists of prompts"):
        build_vocabulary(load_coco(str(ann)), synonyms=str(syn))


def test_autolabel_folder_and_bag(dataset, tmp_path):
    from pycocotools.coco import COCO
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from dart_ros.config import DetectorConfig
    from dart_ros.evaluation.autolabel import AutolabelConfig, run

    images, _, _ = dataset
    det = DetectorConfig(backbone="tiny", device="cpu", classes=["person", "dog"], confidence_threshold=0.3)
    out = run(AutolabelConfig(source=str(images), out_dir=str(tmp_path / "folder")), det)
    coco = COCO(out["annotations"])
    assert len(coco.getImgIds()) == 6 and [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["person", "dog"]
    assert out["boxes"] == len(coco.getAnnIds()) > 0

    ts = get_typestore(Stores.ROS2_KILTED)
    Image, Header, Time = (
        ts.types["sensor_msgs/msg/Image"],
        ts.types["std_msgs/msg/Header"],
        ts.types["builtin_interfaces/msg/Time"],
    )
    bag = tmp_path / "bag"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection("/cam/image_raw", Image.__msgtype__, typestore=ts)
        for i in range(5):
            arr = random_image(np.random.default_rng(i), 60, 80)
            msg = Image(
                header=Header(stamp=Time(sec=i, nanosec=0), frame_id="cam"),
                height=60,
                width=80,
                encoding="bgr8",
                is_bigendian=0,
                step=240,
                data=arr.reshape(-1),
            )
            w.write(conn, i * 10**9, ts.serialize_cdr(msg, Image.__msgtype__))
    out = run(
        AutolabelConfig(source=str(bag), topic="/cam/image_raw", every_nth=2, out_dir=str(tmp_path / "bag_out")), det
    )
    coco = COCO(out["annotations"])
    assert len(coco.getImgIds()) == 3
    for img in coco.loadImgs(coco.getImgIds()):
        assert (tmp_path / "bag_out" / img["file_name"]).exists() and (img["height"], img["width"]) == (60, 80)
    with pytest.raises(ValueError, match="not in"):
        run(AutolabelConfig(source=str(bag), topic="/nope", out_dir=str(tmp_path / "x")), det)


def test_coco_eval_shards_under_torchrun(dataset, tmp_path):
    """Two ranks each predict every other image; rank 0 merges the shards and scores all of them."""
    images, ann_path, _ = dataset
    out = tmp_path / "ev"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29541",
        os.path.join(ROOT, "offline", "eval_coco.py"),
        "--annotations",
        str(ann_path),
        "--images",
        str(images),
        "--backbone",
        "tiny",
        "--device",
        "cpu",
        "--out-dir",
        str(out),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["images"] == 6
    shards = [
        [json.loads(ln)["image_id"] for ln in (out / f"predictions_rank{r}_of2.jsonl").read_text().splitlines()]
        for r in range(2)
    ]
    assert sorted(shards[0] + shards[1]) == list(range(100, 106)) and not set(shards[0]) & set(shards[1])
