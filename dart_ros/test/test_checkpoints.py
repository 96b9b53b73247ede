"""Checkpoint round trips in the three DART formats, and clear errors for files that do not fit."""

import pytest
import torch

from conftest import random_image
from dart_ros.config import DetectorConfig
from dart_ros.detector import Detector
from dart_ros.model import checkpoint as ck
from dart_ros.model.registry import build_model

NAMES = ["person", "bicycle", "stop sign"]


def outputs(model, image):
    det = Detector(DetectorConfig(backbone=model.preset.name, device="cpu", confidence_threshold=0.0), model=model)
    det.set_classes(NAMES)
    feat = det.features(det.preprocess(image)[0])
    return feat, det.encode_decode(feat)


def assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], atol=0, rtol=0)
    torch.testing.assert_close(a[1].logits, b[1].logits, atol=0, rtol=0)
    torch.testing.assert_close(a[1].boxes, b[1].boxes, atol=0, rtol=0)


def assert_differ(a, b):
    assert (a[1].logits - b[1].logits).abs().max() > 1e-4


def test_sam3_format_round_trip(tmp_path, rng):
    image = random_image(rng)
    src = build_model("tiny", seed=1)
    path = str(tmp_path / "sam3.pt")
    ck.save_sam3_checkpoint(src.sam3, path)
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith("detector.") for k in raw["model"])
    loaded = build_model("tiny", seed=2, sam3_checkpoint=path)
    other = build_model("tiny", seed=2)
    assert_same(outputs(src, image), outputs(loaded, image))
    assert_differ(outputs(src, image), outputs(other, image))


def test_sam3_checkpoint_loads_at_another_image_size(tmp_path, rng):
    """RoPE tables are recomputed for S, never taken from the file."""
    path = str(tmp_path / "sam3.pt")
    ck.save_sam3_checkpoint(build_model("tiny", seed=1).sam3, path)
    m = build_model("tiny", image_size=168, sam3_checkpoint=path)
    assert m.feature_size == 12
    feat, out = outputs(m, random_image(rng))
    assert feat.shape == (1, 64, 12, 12) and torch.isfinite(out.logits).all()


def test_student_format_round_trip(tmp_path, rng):
    image = random_image(rng)
    sam3_path = str(tmp_path / "sam3.pt")
    ck.save_sam3_checkpoint(build_model("tiny", seed=1).sam3, sam3_path)
    src = build_model("tiny_student", seed=3, sam3_checkpoint=sam3_path)
    path = str(tmp_path / "student.pt")
    ck.save_student_checkpoint(src.vision, path, epoch=4, loss=0.5)
    raw = torch.load(path, weights_only=True)
    assert set(raw["adapter_state_dict"]) == {k for k in raw["student_state_dict"] if k.startswith("adapters.")}
    assert any(k.startswith("backbone.") for k in raw["student_state_dict"])
    loaded = build_model("tiny_student", seed=4, sam3_checkpoint=sam3_path, backbone_checkpoint=path)
    assert_same(outputs(src, image), outputs(loaded, image))
    assert_differ(outputs(src, image), outputs(build_model("tiny_student", seed=4, sam3_checkpoint=sam3_path), image))


def test_pruned_format_round_trip(tmp_path, rng):
    image = random_image(rng)
    sam3_path = str(tmp_path / "sam3.pt")
    ck.save_sam3_checkpoint(build_model("tiny", seed=1).sam3, sam3_path)
    src = build_model("tiny", seed=5, skip_blocks=(0,), mask_blocks="2:mlp", sam3_checkpoint=sam3_path)
    path = str(tmp_path / "pruned.pt")
    ck.save_pruned_checkpoint(src.vision, path, skip_blocks=(0,), mask_blocks="2:mlp")
    raw = torch.load(path, weights_only=True)
    keys = raw["pruned_state_dict"]
    assert not any(k.startswith("trunk.blocks.0.") for k in keys)
    assert not any(k.startswith("trunk.blocks.2.mlp.") for k in keys)
    assert any(k.startswith("trunk.blocks.2.attn.") for k in keys)
    # The skip list comes from the file.
    loaded = build_model("tiny", seed=6, sam3_checkpoint=sam3_path, backbone_checkpoint=path)
    assert loaded.vision.skip_blocks == (0,)
    assert_same(outputs(src, image), outputs(loaded, image))


def test_training_free_pruning_from_full_checkpoint(tmp_path, rng):
    path = str(tmp_path / "sam3.pt")
    ck.save_sam3_checkpoint(build_model("tiny", seed=1).sam3, path)
    full = build_model("tiny", sam3_checkpoint=path)
    pruned = build_model("tiny_pruned", sam3_checkpoint=path)
    a, b = outputs(full, random_image(rng)), outputs(pruned, random_image(rng))
    assert a[0].shape == b[0].shape and not torch.equal(a[0], b[0])


def test_missing_and_wrong_files_raise_clear_errors(tmp_path):
    with pytest.raises(ck.CheckpointError, match="not found"):
        build_model("tiny", sam3_checkpoint=str(tmp_path / "nope.pt"))
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ck.CheckpointError, match=r"is not a PyTorch checkpoint \(text starting 'not a checkpoint'\)"):
        build_model("tiny", sam3_checkpoint=str(bad))
    bad.write_bytes(b"PK\x03\x04 a cut zip")  # looks like torch.save's format: torch's own reason, one line
    with pytest.raises(ck.CheckpointError, match=r"^cannot read checkpoint .*\(\w+: [^\n]*\)$"):
        build_model("tiny", sam3_checkpoint=str(bad))
    student = tmp_path / "student.pt"
    ck.save_student_checkpoint(build_model("tiny_student").vision, str(student))
    with pytest.raises(ck.CheckpointError, match="backbone checkpoint"):
        build_model("tiny", sam3_checkpoint=str(student))
    with pytest.raises(ck.CheckpointError, match="not a DART pruned checkpoint"):
        build_model("tiny", backbone_checkpoint=str(student))


def test_mismatched_checkpoint_lists_keys(tmp_path):
    path = str(tmp_path / "sam3.pt")
    state = build_model("tiny").sam3.state_dict()
    state.pop("transformer.decoder.query_embed.weight")
    state["transformer.decoder.bbox_embed.layers.0.weight"] = torch.zeros(3, 3)
    torch.save({"detector." + k: v for k, v in state.items()}, path)
    with pytest.raises(ck.CheckpointError) as e:
        build_model("tiny", sam3_checkpoint=path)
    msg = str(e.value)
    assert "missing keys: transformer.decoder.query_embed.weight" in msg
    assert "bbox_embed.layers.0.weight: file (3, 3)" in msg
    # A full-size model does not accept a tiny checkpoint.
    ck.save_sam3_checkpoint(build_model("tiny").sam3, path)
    with pytest.raises(ck.CheckpointError, match="shape mismatches"):
        from dart_ros.model.arch import FULL
        from dart_ros.model.build import build_transformer

        ck.load_into(build_transformer(FULL), build_model("tiny").sam3.transformer.state_dict(), "tiny file")


def test_pruned_checkpoint_must_match_requested_blocks(tmp_path):
    m = build_model("tiny", skip_blocks=(0,))
    path = str(tmp_path / "pruned.pt")
    ck.save_pruned_checkpoint(m.vision, path, skip_blocks=(0,))
    with pytest.raises(ck.CheckpointError, match="was pruned with skip_blocks"):
        build_model("tiny", backbone_checkpoint=path, skip_blocks=(2,))


def test_global_blocks_cannot_be_pruned():
    with pytest.raises(ValueError, match="global"):
        build_model("tiny", skip_blocks=(1,))
    with pytest.raises(ValueError, match="global"):
        build_model("tiny", mask_blocks="3:attn")
    with pytest.raises(ValueError, match="bad mask-block"):
        build_model("tiny", mask_blocks="2:ffn")


def test_text_encoder_free_model_loads_sam3(tmp_path):
    path = str(tmp_path / "sam3.pt")
    ck.save_sam3_checkpoint(build_model("tiny", seed=1).sam3, path)
    m = build_model("tiny", sam3_checkpoint=path, load_text_encoder=False)
    assert not m.has_text_encoder
    assert not any("language_backbone.encoder" in k for k in m.state_dict())
