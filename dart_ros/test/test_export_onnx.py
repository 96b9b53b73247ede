"""ONNX export of both stages: valid graphs, dynamic class axis, onnxruntime parity with torch,
and end-to-end detections equal to the Detector's (the path a TensorRT engine would take)."""

import json

import numpy as np
import pytest

from conftest import make_detector, random_image
from dart_ros.model.registry import build_model
from dart_ros.postprocess import postprocess
from dart_ros.runtime.onnx_export import ENCDEC_INPUTS, OnnxRuntimeStages, export, parity, write_manifest


@pytest.mark.parametrize(
    "backbone,mode", [("tiny", "official"), ("tiny_student", "text_only"), ("tiny_pruned", "official")]
)
def test_export_parity(tmp_path, backbone, mode):
    import onnx

    model = build_model(backbone)
    files = export(model, str(tmp_path), mode)
    graph = onnx.load(files["encdec"]).graph
    assert [i.name for i in graph.input] == list(ENCDEC_INPUTS)
    text = graph.input[ENCDEC_INPUTS.index("text")]
    assert text.type.tensor_type.shape.dim[1].dim_param == "classes"  # dynamic N
    report = parity(model, OnnxRuntimeStages(files["backbone"], files["encdec"]), mode, class_counts=(1, 4))
    assert set(report) == {
        "features",
        "logits_1cls",
        "boxes_1cls",
        "presence_1cls",
        "logits_4cls",
        "boxes_4cls",
        "presence_4cls",
    }
    for name, r in report.items():
        assert r["max_abs"] < 1e-4, (name, r)
    manifest = write_manifest(str(tmp_path / "manifest.json"), model, mode, 17, files, report)
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert manifest["image_size"] == 224 and manifest["feature_size"] == 16 and manifest["presence"]


def test_onnx_stages_reproduce_the_detector(tmp_path, rng):
    det = make_detector("tiny", confidence_threshold=0.3)
    names = ["person", "car", "dog"]
    det.set_classes(names)
    files = export(build_model("tiny"), str(tmp_path), "official")  # same seed: same weights
    stages = OnnxRuntimeStages(files["backbone"], files["encdec"])
    img = random_image(rng, 300, 200)
    pixels, info = det.preprocess(img)
    feat = stages.features(pixels)
    v = det.vocabulary
    raw = stages.encode_decode(feat, v.text, v.mask)
    boxes, scores, ids = postprocess(
        raw.scores(), raw.boxes, (info.scale_x, info.scale_y), info.source_hw, det.config.postprocess_params()
    )
    want = det.detect(img)
    assert len(want) > 0
    np.testing.assert_array_equal(ids.numpy(), want.class_ids)
    np.testing.assert_allclose(scores.numpy(), want.scores, atol=1e-4)
    np.testing.assert_allclose(boxes.numpy(), want.boxes, atol=1e-2)
