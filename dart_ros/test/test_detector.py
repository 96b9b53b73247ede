"""The Detector API: vocabulary validation and caching, inputs, outputs, run-time settings."""

import logging
import os

import numpy as np
import pytest
import torch

from conftest import make_detector, random_image
from dart_ros.detector import InvalidClassesError
from dart_ros.model import checkpoint as ck
from dart_ros.model.registry import build_model
from dart_ros.preprocess import ImageFormatError


class CountingTextEncoder:
    """Wraps ``forward_text`` to record which names reach the text encoder."""

    def __init__(self, det):
        self.calls = []
        backbone = det.model.sam3.backbone
        inner = backbone.forward_text

        def forward_text(names, *a, **k):
            self.calls.append(list(names))
            return inner(names, *a, **k)

        backbone.forward_text = forward_text


def test_set_classes_validates_and_keeps_previous(caplog):
    det = make_detector()
    assert det.set_classes(["person", "  red   car "]) == ["person", "red car"]
    v = det.vocabulary_version
    bad = [[], ["person", ""], ["ok", "  "], "person", ["x" * 300], ["word " * 40], [3], ["a"] * 0]
    for names in bad:
        with pytest.raises(InvalidClassesError):
            det.set_classes(names)
    assert det.classes == ["person", "red car"] and det.vocabulary_version == v
    with caplog.at_level(logging.WARNING, logger="dart_ros"):
        assert det.set_classes(["dog", "cat", "dog"]) == ["dog", "cat"]
    assert "duplicate" in caplog.text
    small = make_detector(max_classes=3)
    with pytest.raises(InvalidClassesError, match="limit is 3"):
        small.set_classes(["a", "b", "c", "d"])


def test_only_new_names_are_encoded():
    det = make_detector()
    counter = CountingTextEncoder(det)
    det.set_classes(["person", "car"])
    det.set_classes(["car", "dog", "person"])
    det.set_classes(["dog"])
    assert counter.calls == [["person", "car"], ["dog"]]
    assert det.classes == ["dog"] and det.vocabulary_version == 3


def test_cached_encodings_equal_fresh_ones():
    a = make_detector()
    a.set_classes(["person", "car", "dog"])
    b = make_detector()
    b.set_classes(["dog"])
    b.set_classes(["person", "car", "dog"])
    torch.testing.assert_close(a.vocabulary.text, b.vocabulary.text, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.vocabulary.mask, b.vocabulary.mask)


def test_disk_text_cache_serves_a_model_without_text_encoder(tmp_path, rng):
    sam3 = str(tmp_path / "sam3.pt")
    ck.save_sam3_checkpoint(build_model("tiny", seed=7).sam3, sam3)
    cache = str(tmp_path / "text.pt")
    full = make_detector(sam3_checkpoint=sam3, text_cache=cache, confidence_threshold=0.0)
    full.set_classes(["person", "car"])
    lean = make_detector(sam3_checkpoint=sam3, text_cache=cache, load_text_encoder=False, confidence_threshold=0.0)
    assert lean.set_classes(["car", "person"]) == ["car", "person"]
    img = random_image(rng)
    full.set_classes(["car", "person"])
    a, b = full.detect(img), lean.detect(img)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    with pytest.raises(InvalidClassesError, match="not in the text cache"):
        lean.set_classes(["car", "giraffe"])
    assert lean.classes == ["car", "person"]
    # A cache written for other weights is ignored, not served.
    other = make_detector(text_cache=cache, load_text_encoder=False)
    with pytest.raises(InvalidClassesError, match="not in the text cache"):
        other.set_classes(["car"])


def test_detect_requires_classes(rng):
    det = make_detector()
    with pytest.raises(RuntimeError, match="set_classes"):
        det.detect(random_image(rng))


def test_detections_are_in_source_pixels(tiny_detector, rng):
    tiny_detector.set_classes(["person", "car", "dog"])
    for h, w in [(479, 641), (64, 500), (300, 37)]:
        d = tiny_detector.detect(random_image(rng, h, w))
        assert len(d) > 0 and d.image_size == (h, w)
        assert d.boxes.dtype == np.float32 and d.boxes.shape == (len(d), 4)
        assert (d.boxes[:, 0] >= 0).all() and (d.boxes[:, 2] <= w).all()
        assert (d.boxes[:, 1] >= 0).all() and (d.boxes[:, 3] <= h).all()
        assert (d.boxes[:, 2] >= d.boxes[:, 0]).all()
        assert (np.diff(d.scores) <= 0).all()
        assert set(d.labels) <= {"person", "car", "dog"}
        assert set(d.timings_ms) == {"preprocess", "backbone", "encdec", "postprocess", "total"}


def test_stretch_box_scaling_is_linear_in_image_size(tiny_detector, rng):
    """The same content at two sizes (a stretch) gives boxes scaled by the size ratio."""
    tiny_detector.set_classes(["person"])
    tiny_detector.update(max_detections=5, nms_iou=1.0)
    img = random_image(rng, 224, 224)
    big = np.repeat(np.repeat(img, 2, axis=0), 3, axis=1)  # 448 x 672: exact integer upscale
    a, b = tiny_detector.detect(img), tiny_detector.detect(big)
    tiny_detector.update(max_detections=100, nms_iou=0.7)
    assert len(a) == len(b) == 5
    # Different pixels after resampling, so features differ slightly: compare loosely.
    np.testing.assert_allclose(b.boxes / [3, 2, 3, 2], a.boxes, atol=8.0)


def test_color_layouts_agree(tiny_detector, rng):
    tiny_detector.set_classes(["person", "car"])
    rgb = random_image(rng)
    ref = tiny_detector.detect(rgb)
    bgr = tiny_detector.detect(np.ascontiguousarray(rgb[:, :, ::-1]), color="bgr")
    rgba = tiny_detector.detect(np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)]), color="rgba")
    for other in (bgr, rgba):
        np.testing.assert_array_equal(other.class_ids, ref.class_ids)
        np.testing.assert_allclose(other.scores, ref.scores, atol=1e-6)
    mono = tiny_detector.detect(rgb[:, :, 0], color="mono")
    assert len(mono) > 0


def test_bad_images_raise_clear_errors(tiny_detector, rng):
    tiny_detector.set_classes(["person"])
    img = random_image(rng)
    cases = [
        (img.astype(np.float32), "dtype"),
        (img[:, :, :2], "does not match layout"),
        (img[0], "does not match layout"),
        (np.zeros((1, 5, 3), np.uint8), "too small"),
        ("not an image", "numpy array or a torch tensor"),
    ]
    for bad, msg in cases:
        with pytest.raises(ImageFormatError, match=msg):
            tiny_detector.detect(bad)
    with pytest.raises(ImageFormatError, match="unknown colour layout"):
        tiny_detector.detect(img, color="yuv")


def test_detect_batch_equals_single_calls(tiny_detector, rng):
    tiny_detector.set_classes(["person", "car"])
    imgs = [random_image(rng, 200, 300), random_image(rng, 321, 123)]
    batch = tiny_detector.detect_batch(imgs)
    for img, got in zip(imgs, batch, strict=True):
        one = tiny_detector.detect(img)
        np.testing.assert_array_equal(got.class_ids, one.class_ids)
        np.testing.assert_allclose(got.scores, one.scores, atol=1e-5)
        np.testing.assert_allclose(got.boxes, one.boxes, atol=1e-2)


def test_detect_batch_takes_a_colour_layout_per_image(tiny_detector, rng):
    """Cameras publish different encodings: each image of a batch is read in its own layout."""
    tiny_detector.set_classes(["person", "car"])
    rgb = random_image(rng, 200, 300)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    a, b = tiny_detector.detect_batch([rgb, bgr], color=["rgb", "bgr"])
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
    with pytest.raises(ValueError, match="2 colour layouts for 1 images"):
        tiny_detector.detect_batch([rgb], color=["rgb", "bgr"])


def test_tensor_input_equals_numpy_input(tiny_detector, rng):
    tiny_detector.set_classes(["person"])
    img = random_image(rng)
    a = tiny_detector.detect(img)
    b = tiny_detector.detect(torch.from_numpy(img))
    np.testing.assert_allclose(a.scores, b.scores, atol=0)


def test_runtime_updates_are_validated(tiny_detector, rng):
    tiny_detector.set_classes(["person", "car"])
    img = random_image(rng)
    for bad in [
        dict(confidence_threshold=1.5),
        dict(nms_iou=0.0),
        dict(nms_mode="soft"),
        dict(max_detections=-1),
        dict(backbone="vit_h"),
        dict(nope=1),
    ]:
        with pytest.raises(ValueError):
            tiny_detector.update(**bad)
    assert tiny_detector.config.confidence_threshold == 0.0
    tiny_detector.update(max_detections=3)
    assert len(tiny_detector.detect(img)) == 3
    tiny_detector.update(max_detections=100, confidence_threshold=0.99)
    assert len(tiny_detector.detect(img)) == 0
    tiny_detector.update(confidence_threshold=0.0)


def test_letterbox_maps_boxes_back(rng):
    det = make_detector(letterbox=True, confidence_threshold=0.0, max_detections=50)
    det.set_classes(["person"])
    d = det.detect(random_image(rng, 100, 300))
    assert len(d) > 0
    assert (d.boxes[:, 3] <= 100).all() and (d.boxes[:, 2] <= 300).all()


def test_reduced_precision_falls_back_to_fp32_on_cpu(rng, caplog):
    with caplog.at_level(logging.WARNING, logger="dart_ros"):
        det = make_detector(precision="bf16", confidence_threshold=0.0)
    assert "fp32" in caplog.text
    det.set_classes(["person"])
    assert det.detect(random_image(rng)).scores.dtype == np.float32


def test_cli_detects_and_writes_json(tmp_path, rng):
    import json

    import cv2

    from dart_ros.cli import detect_main

    img = tmp_path / "a.png"
    cv2.imwrite(str(img), random_image(rng, 90, 130))
    out_json = tmp_path / "d.json"
    assert (
        detect_main(
            [
                str(img),
                "--classes",
                "person, dog",
                "--backbone",
                "tiny",
                "--device",
                "cpu",
                "--confidence-threshold",
                "0.0",
                "--json",
                str(out_json),
                "--out",
                str(tmp_path / "ann.png"),
            ]
        )
        == 0
    )
    [entry] = json.loads(out_json.read_text())
    assert entry["detections"] and {d["class"] for d in entry["detections"]} <= {"person", "dog"}
    assert cv2.imread(str(tmp_path / "ann.png")).shape == (90, 130, 3)
    assert detect_main([str(tmp_path / "missing.png"), "--classes", "x", "--backbone", "tiny", "--device", "cpu"]) == 2


def test_a_registered_runtime_plugs_in_behind_the_runner_interface(rng):
    """A backend registered by name is what the Detector runs: here the eager runners behind a
    counting backend, which must give the eager runtime's detections."""
    from dart_ros.runtime.eager import build_eager
    from dart_ros.runtime.registry import register_runtime, runtime_names

    calls = []

    def counting(model, config, device, dtype):
        runners = build_eager(model, config, device, dtype)
        run, encode = runners.backbone.run, runners.encdec.encode
        runners.backbone.run = lambda *a, **k: calls.append("backbone") or run(*a, **k)
        runners.encdec.encode = lambda *a, **k: calls.append("encode") or encode(*a, **k)
        runners.name = "counting"
        return runners

    register_runtime("counting", counting, ("cpu",))
    assert "counting" in runtime_names()
    img = random_image(rng)
    ref = make_detector("tiny", runtime="eager", confidence_threshold=0.0, classes=["person", "car"])
    det = make_detector("tiny", runtime="counting", confidence_threshold=0.0, classes=["person", "car"])
    assert det.describe()["runtime"] == "counting"
    want, got = ref.detect(img), det.detect(img)
    assert calls.count("encode") == 1
    np.testing.assert_array_equal(got.class_ids, want.class_ids)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_detector("tiny", runtime="fast")
    with pytest.raises(ValueError, match="runtime must be one of"):
        make_detector("tiny", runtime="tensorrt")


def test_warm_up_of_the_eager_runtime_runs_no_model():
    det = make_detector("tiny", runtime="eager")
    feat = det.backbone_runner.warm_up()
    assert feat.shape == (1, det.model.arch.d_model, det.model.feature_size, det.model.feature_size)
    assert not feat.any()  # zeros: nothing was computed
    assert det.warm_up() >= 0.0


def test_kernel_cache_folder(monkeypatch, tmp_path):
    """cache_dir points torch.compile's and Triton's on-disk caches into one folder, unless the
    environment names them already; empty leaves them alone."""
    from dart_ros.detector import use_kernel_cache

    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert use_kernel_cache("") == "" and "TRITON_CACHE_DIR" not in os.environ
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert use_kernel_cache("auto") == str(tmp_path / "xdg" / "dart_ros")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "xdg" / "dart_ros" / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "xdg" / "dart_ros" / "triton")
    monkeypatch.setenv("TRITON_CACHE_DIR", "/elsewhere")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert use_kernel_cache(str(tmp_path / "mine")) == str(tmp_path / "mine")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine" / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == "/elsewhere"  # the user's choice wins
