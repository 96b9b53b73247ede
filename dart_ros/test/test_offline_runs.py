"""Offline tools that never mislead: a run resumes only when it is the same run, unreadable images
are skipped and listed (or fatal on request), autolabel and eval resume from their records (a line
cut by a killed run is redone), errors are one line, and the ONNX pair runs from its files alone."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import random_image
from dart_ros.config import DetectorConfig
from dart_ros.run_identity import RunMismatchError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATS = {1: "person", 3: "car", 7: "dog"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Six small images with rectangles, their instances JSON, and a copy of the folder with one
    unreadable image (a text file named .jpg)."""
    import cv2

    root = tmp_path_factory.mktemp("data")
    good = root / "good"
    good.mkdir()
    rng = np.random.default_rng(3)
    images, anns = [], []
    for i in range(6):
        img = random_image(rng, 96, 128)
        cv2.rectangle(img, (10 + 5 * i, 20), (60 + 5 * i, 70), (255, 0, 0), -1)
        cv2.imwrite(str(good / f"img_{i}.jpg"), img[:, :, ::-1])
        images.append({"id": 10 + i, "file_name": f"img_{i}.jpg", "height": 96, "width": 128})
        anns.append(
            {
                "id": i + 1,
                "image_id": 10 + i,
                "category_id": list(CATS)[i % 3],
                "bbox": [10 + 5 * i, 20, 50, 50],
                "area": 2500,
                "iscrowd": 0,
            }  # fmt: skip
        )
    ann = root / "instances.json"
    cats = [{"id": k, "name": v} for k, v in CATS.items()]
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    bad = root / "with_bad"
    bad.mkdir()
    for p in good.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "img_3.jpg").write_text("this is not an image\n")
    return root, good, bad, ann


def tiny(**kw):
    return DetectorConfig(**{"backbone": "tiny", "device": "cpu", **kw})


def distill_cfg(images, out, **kw):
    from dart_ros.training.distill import DistillConfig

    base = dict(images=str(images), out_dir=str(out), teacher="tiny", student="tiny_student", batch_size=2,
                workers=0, device="cpu", epochs=2, save_every_steps=1, lr=3e-3)  # fmt: skip
    base.update(kw)
    return DistillConfig(**base)


# ---------------------------------------------------------------------------------- 1. eval identity


def test_eval_refuses_another_model_in_the_same_folder_and_starts_over_on_request(dataset, tmp_path):
    from dart_ros.evaluation.coco import EvalConfig, run

    _, good, _, ann = dataset
    cfg = EvalConfig(annotations=str(ann), images=str(good), out_dir=str(tmp_path))
    first = run(cfg, tiny())
    with pytest.raises(RunMismatchError, match=r"detector\.backbone \"tiny\" -> \"tiny_pruned\""):
        run(cfg, tiny(backbone="tiny_pruned"))
    with pytest.raises(RunMismatchError, match=r"protocol \"official\" -> \"nms\""):
        run(EvalConfig(annotations=str(ann), images=str(good), out_dir=str(tmp_path), protocol="nms"), tiny())
    assert json.loads((tmp_path / "results.json").read_text())["stats"] == first["stats"]  # untouched
    fresh = EvalConfig(annotations=str(ann), images=str(good), out_dir=str(tmp_path), protocol="nms", resume=False)
    second = run(fresh, tiny(backbone="tiny_pruned"))
    assert second["ms_per_image_median"] is not None  # predicted anew, not read from the old cache
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["protocol"] == "nms" and saved["detector"]["backbone"] == "tiny_pruned"
    assert saved["model"] == second["model"] != first["model"]
    again = run(EvalConfig(annotations=str(ann), images=str(good), out_dir=str(tmp_path), protocol="nms"),
                tiny(backbone="tiny_pruned", runtime="eager"))  # fmt: skip
    assert again["ms_per_image_median"] is None and again["stats"] == second["stats"]  # runtime: same run


# ------------------------------------------------------------------------------ 2. training identity


def test_distill_resumes_only_the_same_run(dataset, tmp_path):
    from dart_ros.training.distill import run

    _, good, _, _ = dataset
    out = tmp_path / "d"
    assert run(distill_cfg(good, out, stop_after_steps=2))["stopped_early"]
    with pytest.raises(RunMismatchError, match=r"teacher \"tiny\" -> \"tiny_pruned\""):
        run(distill_cfg(good, out, teacher="tiny_pruned"))
    summary = run(distill_cfg(good, out))  # the same run continues (only the stop point differed)
    assert summary["steps"] == 6 and [json.loads(ln)["step"] for ln in open(out / "train_log.jsonl")] == list(
        range(1, 7)
    )
    for change, pattern in ((dict(lr=0.1), r"lr 0\.003 -> 0\.1"), (dict(batch_size=3), r"batch_size 2 -> 3")):
        with pytest.raises(RunMismatchError, match=pattern):
            run(distill_cfg(good, out, **change))
    assert json.loads((out / "config.json").read_text())["lr"] == 0.003  # the record still tells the truth
    restarted = run(distill_cfg(good, out, lr=0.1, resume=False))
    assert restarted["steps"] == 6 and json.loads((out / "config.json").read_text())["lr"] == 0.1
    assert [json.loads(ln)["step"] for ln in open(out / "train_log.jsonl")] == list(range(1, 7))


def test_distill_refuses_another_dataset_and_unrecorded_runs(dataset, tmp_path):
    from dart_ros.training.distill import run

    _, good, bad, _ = dataset
    out = tmp_path / "d"
    run(distill_cfg(good, out, stop_after_steps=1))
    with pytest.raises(RunMismatchError, match="dataset"):
        run(distill_cfg(bad, out))
    (out / "run_identity.json").unlink()
    with pytest.raises(ValueError, match="without a recorded identity"):
        run(distill_cfg(good, out))


def test_prune_resumes_only_the_same_search(dataset, tmp_path):
    from dart_ros.training.prune import PruneConfig, run

    _, good, _, _ = dataset

    def cfg(**kw):
        base = dict(images=str(good), out_dir=str(tmp_path), backbone="tiny", num_remove=1, calibration_images=2,
                    analyze_only=True, workers=0, device="cpu")  # fmt: skip
        base.update(kw)
        return PruneConfig(**base)

    assert run(cfg())["skip_blocks"]
    with pytest.raises(RunMismatchError, match="num_remove 1 -> 2"):
        run(cfg(num_remove=2))
    assert len(json.loads((tmp_path / "prune_report.json").read_text())["greedy"]) == 1
    run(cfg(num_remove=2, resume=False))
    assert len(json.loads((tmp_path / "prune_report.json").read_text())["greedy"]) == 2


def test_prune_refuses_more_removals_than_candidates(dataset, tmp_path):
    from dart_ros.training.prune import PruneConfig, run

    _, good, _, _ = dataset
    with pytest.raises(ValueError, match=r"--num-remove 16: tiny has 2 block candidates"):
        run(PruneConfig(images=str(good), out_dir=str(tmp_path), backbone="tiny", num_remove=16, device="cpu"))
    assert not os.listdir(tmp_path)  # refused before writing anything


# --------------------------------------------------------------------------------- 3. unreadable images


def test_eval_skips_lists_and_excludes_unreadable_images_or_stops_on_request(dataset, tmp_path):
    from dart_ros.evaluation.coco import EvalConfig, run
    from dart_ros.training.data import UnreadableImageError

    _, _, bad, ann = dataset
    res = run(EvalConfig(annotations=str(ann), images=str(bad), out_dir=str(tmp_path / "a")), tiny())
    assert res["images"] == 5 and [os.path.basename(p) for p in res["unreadable_images"]] == ["img_3.jpg"]
    with pytest.raises(UnreadableImageError, match="img_3.jpg"):
        run(EvalConfig(annotations=str(ann), images=str(bad), out_dir=str(tmp_path / "b"), strict_images=True), tiny())


def test_distill_skips_and_lists_unreadable_images(dataset, tmp_path):
    from dart_ros.training.data import UnreadableImageError
    from dart_ros.training.distill import run

    _, _, bad, _ = dataset
    summary = run(distill_cfg(bad, tmp_path / "a", epochs=1))
    assert summary["steps"] == 3 and [os.path.basename(p) for p in summary["unreadable_images"]] == ["img_3.jpg"]
    with pytest.raises(UnreadableImageError):
        run(distill_cfg(bad, tmp_path / "b", epochs=1, strict_images=True))


def test_distill_skips_unreadable_images_consistently_under_torchrun(dataset, tmp_path):
    _, _, bad, _ = dataset
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
           os.path.join(ROOT, "offline", "distill.py"), "--images", str(bad), "--teacher", "tiny", "--student",
           "tiny_student", "--out-dir", str(out), "--epochs", "1", "--batch-size", "1", "--workers", "0",
           "--device", "cpu", "--level-weights", "0", "0", "1"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and [os.path.basename(p) for p in summary["unreadable_images"]] == ["img_3.jpg"]
    # a one-process run of the same command is another run: the world size differs
    from dart_ros.training.distill import run

    with pytest.raises(RunMismatchError, match="world_size 2 -> 1"):
        run(distill_cfg(bad, out, epochs=1, batch_size=1, level_weights=(0.0, 0.0, 1.0), save_every_steps=500))


def test_autolabel_writes_as_it_goes_resumes_and_skips_unreadable_images(dataset, tmp_path):
    from pycocotools.coco import COCO

    from dart_ros.evaluation.autolabel import AutolabelConfig, run

    _, _, bad, _ = dataset
    det = tiny(classes=["person", "car"], confidence_threshold=0.3)
    out = tmp_path / "labels"
    first = run(AutolabelConfig(source=str(bad), out_dir=str(out), max_frames=2), det)
    assert first["images"] == 2 and len((out / "labels.jsonl").read_text().splitlines()) == 2
    # a run killed in the middle of a line: that image is labelled again, nothing else
    with open(out / "labels.jsonl", "a") as f:
        f.write('{"frame": 2, "file_na')
    second = run(AutolabelConfig(source=str(bad), out_dir=str(out)), det)
    assert second["images"] == 5 and [u.split(":")[0] for u in second["unreadable_images"]] == ["img_3.jpg"]
    frames = [json.loads(ln)["frame"] for ln in (out / "labels.jsonl").read_text().splitlines()]
    assert frames == [0, 1, 2, 3, 4, 5]
    coco = COCO(str(out / "annotations.json"))
    assert len(coco.getImgIds()) == 5 and not os.path.exists(str(out / "annotations.json.tmp"))
    with pytest.raises(RunMismatchError, match="classes"):
        run(AutolabelConfig(source=str(bad), out_dir=str(out)), tiny(classes=["dog"]))
    with pytest.raises(ValueError, match=r"--merge-groups names \['truck'\] are not among --classes"):
        run(AutolabelConfig(source=str(bad), out_dir=str(tmp_path / "x"), merge_groups="car,truck"), det)


# ----------------------------------------------------------------------------------- 4. eval cache


def test_eval_redoes_an_image_whose_cache_line_was_cut(dataset, tmp_path):
    from dart_ros.evaluation.coco import EvalConfig, run

    _, good, _, ann = dataset
    cfg = EvalConfig(annotations=str(ann), images=str(good), out_dir=str(tmp_path), max_images=4)
    whole = run(cfg, tiny())
    cache = tmp_path / "predictions_rank0_of1.jsonl"
    text = cache.read_text()
    cache.write_text(text[: len(text) - 25])  # the last record cut mid-write
    again = run(cfg, tiny())
    assert again["images"] == 4 and again["stats"] == whole["stats"]
    rows = [json.loads(ln) for ln in cache.read_text().splitlines()]
    assert [r["image_id"] for r in rows] == [10, 11, 12, 13]


# ---------------------------------------------------------------------------------- 6. clear errors


def run_tool(tool, *args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "offline", tool), *map(str, args)], capture_output=True, text=True,
        timeout=300, cwd=ROOT,
    )  # fmt: skip


def test_errors_are_one_line_and_a_traceback_only_with_debug(dataset, tmp_path):
    root, good, _, _ = dataset
    nameless = root / "nameless.json"
    nameless.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 5}]}))
    common = ("--images", good, "--backbone", "tiny", "--device", "cpu", "--out-dir", tmp_path / "e")
    res = run_tool("eval_coco.py", "--annotations", nameless, *common)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "eval_coco.py: error: annotations: category 5 has no 'name' (--debug shows the traceback)"
    )
    res = run_tool("eval_coco.py", "--annotations", nameless, *common, "--debug")
    assert res.returncode == 1 and "Traceback" in res.stderr
    text_ckpt = root / "notes.txt"
    text_ckpt.write_text("my notes\n")
    res = run_tool("export_onnx.py", "--backbone", "tiny", "--sam3-checkpoint", text_ckpt, "--out-dir", tmp_path / "o")
    assert res.returncode == 1 and res.stderr.strip().splitlines()[-1].startswith("export_onnx.py: error: ")
    assert "is not a PyTorch checkpoint (text starting 'my notes')" in res.stderr and "Traceback" not in res.stderr


def test_annotations_of_unlisted_categories_are_reported(dataset, tmp_path, caplog):
    from dart_ros.evaluation.coco import EvalConfig, run

    root, good, _, ann = dataset
    data = json.loads(ann.read_text())
    data["annotations"].append(dict(data["annotations"][0], id=99, category_id=42))
    stray = root / "stray.json"
    stray.write_text(json.dumps(data))
    res = run(EvalConfig(annotations=str(stray), images=str(good), out_dir=str(tmp_path)), tiny())
    assert res["annotations_with_unknown_category"] == 1
    assert "1 annotations have a category id the file does not list" in caplog.text


def test_a_short_run_logs_every_step(dataset, tmp_path):
    from dart_ros.training.distill import run

    _, good, _, _ = dataset
    run(distill_cfg(good, tmp_path, epochs=1, log_every=20))  # 3 steps: every one is logged
    assert [json.loads(ln)["step"] for ln in open(tmp_path / "train_log.jsonl")] == [1, 2, 3]


# ------------------------------------------------------------------------------------- 5. help texts

TOOLS = sorted(f for f in os.listdir(os.path.join(ROOT, "offline")) if f.endswith(".py"))  # every tool there


@pytest.mark.parametrize("tool", TOOLS)
def test_every_option_has_a_help_text(tool):
    res = run_tool(tool, "--help")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith("-h, --help"))
    missing, i = [], start
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("  -"):
            parts = ln.strip().split("  ", 1)
            described = len(parts) == 2 and parts[1].strip()
            described = described or (i + 1 < len(lines) and lines[i + 1].startswith(" " * 8))
            if not described:
                missing.append(parts[0])
        i += 1
    assert not missing, f"{tool}: options without help: {missing}"


def test_help_names_the_valid_choices():
    from dart_ros.presets import list_backbones

    def help_text(tool):
        return " ".join(run_tool(tool, "--help").stdout.split())

    text = help_text("prune.py")
    assert all(name in text for name in list_backbones("vit"))
    text = help_text("eval_coco.py")
    assert "official:" in text and "nms:" in text and "(0 = all)" in text
    text = help_text("distill.py")
    assert all(name in text for name in list_backbones("student")) and '"25:attn,28:mlp"' in text


# --------------------------------------------------------------------------------------- 7. ONNX files


STANDALONE = r"""
import json, sys
import numpy as np
import onnxruntime as ort

folder, image_path = sys.argv[1], sys.argv[2]
manifest = json.load(open(f"{folder}/manifest.json"))
files = manifest["files"]
image = np.load(image_path)  # (S, S, 3) uint8 RGB: the stretch resize is the identity
x = ((image.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]
backbone = ort.InferenceSession(f"{folder}/{files['backbone']}")
encdec = ort.InferenceSession(f"{folder}/{files['encdec']}")
(feat,) = backbone.run(None, {"pixels": x})
prompts = np.load(f"{folder}/{manifest['text_inputs']['file']}")
feeds = {"img_feat": feat, "text": prompts["text"], "text_mask": prompts["text_mask"]}
logits, boxes, presence = encdec.run(None, feeds)
sig = lambda v: 1 / (1 + np.exp(-v))
scores = sig(logits) * sig(presence)[:, None]
h, w = image.shape[:2]
out = []
for n, q in zip(*np.nonzero(scores >= 0.3)):
    cx, cy, bw, bh = boxes[n, q]
    box = np.clip([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], 0, [w, h, w, h])
    out.append([str(prompts["names"][n]), float(scores[n, q]), *map(float, box)])
print(json.dumps(sorted(out, key=lambda r: -r[1])))
"""


def test_the_onnx_pair_runs_from_its_files_alone(tmp_path):
    from dart_ros.detector import Detector

    out = tmp_path / "onnx"
    res = run_tool("export_onnx.py", "--backbone", "tiny", "--classes", "person", "car", "--check", "false",
                   "--out-dir", out)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {"backbone", "encdec", "prompts"} and "postprocessing" in manifest
    image = random_image(np.random.default_rng(5), manifest["image_size"], manifest["image_size"])
    np.save(tmp_path / "image.npy", image)
    script = tmp_path / "standalone.py"
    script.write_text(STANDALONE)
    # a clean interpreter that cannot import dart_ros or torch: only the files and onnxruntime
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.modules['torch'] = None; sys.modules['dart_ros'] = None; "
         f"exec(open({str(script)!r}).read())", str(out), str(tmp_path / "image.npy")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    det = Detector(tiny(confidence_threshold=0.3, nms_iou=1.0, max_detections=1000))
    det.set_classes(["person", "car"])
    want = det.detect(image)
    assert len(want) == len(got) > 0
    assert [g[0] for g in got] == want.labels
    np.testing.assert_allclose([g[1] for g in got], want.scores, atol=1e-4)
    np.testing.assert_allclose([g[2:] for g in got], want.boxes, atol=0.05)


# ------------------------------------------------------------------------- the docs' worked examples


def test_the_worked_examples_in_the_docs_run(tmp_path):
    """docs/offline.md's "Worked examples" block, line by line, into a temporary folder."""
    docs = open(os.path.join(os.path.dirname(ROOT), "docs", "offline.md")).read()
    block = docs.split("## Worked examples", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    block = block.replace("/tmp/dart_tiny", str(tmp_path / "tiny")).replace("/tmp/dart_runs", str(tmp_path / "runs"))
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert sum(ln.startswith("python offline/") for ln in lines) >= 8
    script = 'set -e\npython() { "$DART_PYTHON" "$@"; }\n' + "\n".join(lines) + "\n"
    env = dict(os.environ, DART_PYTHON=sys.executable)
    res = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = tmp_path / "runs"
    eval_results = json.loads((runs / "eval" / "results.json").read_text())
    assert eval_results["protocol"] == "nms" and eval_results["images"] == 8
    assert (runs / "distill" / "adapter_final.pt").exists() and (runs / "prune" / "pruned_final.pt").exists()
    assert json.loads((runs / "distill" / "summary.json").read_text())["steps"] == 8
    assert (runs / "labels" / "annotations.json").exists() and (runs / "onnx" / "prompts.npz").exists()
