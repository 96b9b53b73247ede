"""Model assembly contracts: the full configuration equals sam3's own builder, every backbone
preset and student gives the detection features the encoder-decoder expects, preprocessing equals
SAM3's processor, postprocessing does what its parameters say."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import random_image
from dart_ros.model.arch import FULL, TINY
from dart_ros.model.build import (
    bpe_path,
    build_dot_product_scoring,
    build_geometry_encoder,
    build_text_encoder,
    build_transformer,
)
from dart_ros.model.registry import build_model
from dart_ros.model.student import STUDENTS, StudentBackbone
from dart_ros.model.vit import build_vit_neck
from dart_ros.postprocess import PostprocessParams, postprocess
from dart_ros.preprocess import preprocess
from dart_ros.presets import PRESETS


def shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_full_configuration_matches_sam3_builder_parts():
    """Same keys and shapes as ``sam3.model_builder``'s own constructors (those that run on a CPU)."""
    from sam3 import model_builder as mb

    assert shapes(build_transformer(FULL).encoder) == shapes(mb._create_transformer_encoder())
    assert shapes(build_dot_product_scoring(FULL)) == shapes(mb._create_dot_product_scoring())
    assert shapes(build_geometry_encoder(FULL)) == shapes(mb._create_geometry_encoder())
    assert shapes(build_text_encoder(FULL)) == shapes(mb._create_text_encoder(bpe_path()))
    theirs = mb._create_vit_neck(mb._create_position_encoding(None), mb._create_vit_backbone(), False)
    assert shapes(build_vit_neck(FULL, 1008)) == shapes(theirs)


@pytest.mark.gpu
def test_full_model_matches_sam3_builder_on_gpu():
    from sam3.model_builder import build_sam3_image_model

    theirs = build_sam3_image_model(bpe_path=bpe_path(), device="cuda", load_from_HF=False, enable_segmentation=False)
    assert shapes(build_model("vit_h").sam3) == shapes(theirs)


# Full-size ViT presets are covered by test_full_vit_presets (one 224-px forward each).
SMALL_PRESETS = sorted(n for n, p in PRESETS.items() if not (p.arch == "full" and p.kind == "vit"))


@pytest.mark.parametrize("name", SMALL_PRESETS)
def test_every_preset_gives_detection_features(name):
    preset = PRESETS[name]
    size = 224 if preset.arch == "tiny" else 112
    m = build_model(name, image_size=size)
    p = size // 14
    with torch.inference_mode():
        f = m.forward_features(torch.randn(2, 3, size, size))
    assert f.shape == (2, m.arch.d_model, p, p) and f.dtype == torch.float32


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_h", "vit_h_pruned16"])
def test_full_vit_presets(name):
    m = build_model(name, image_size=224)
    assert len([b for b in m.vision.trunk.blocks if type(b).__name__ == "SkippedBlock"]) == len(
        PRESETS[name].skip_blocks
    )
    with torch.inference_mode():
        assert m.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 256, 16, 16)


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_students_follow_the_sam3_neck_contract(name):
    s = StudentBackbone(STUDENTS[name].timm_name, FULL, 112).eval()
    with torch.inference_mode():
        feats, pos, _, _ = s(torch.randn(1, 3, 112, 112))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 32, 32), (1, 256, 16, 16), (1, 256, 8, 8)]
    assert [tuple(p.shape) for p in pos] == [tuple(f.shape) for f in feats]
    assert not any(p.requires_grad for p in s.backbone.parameters())
    assert all(p.requires_grad for p in s.adapters.parameters())
    s.train()
    assert not s.backbone.training


def test_forward_detection_equals_full_neck_level():
    neck = build_vit_neck(TINY, 224).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        full = neck(x)[0][2]
        torch.testing.assert_close(neck.forward_detection(x), full)


def test_preprocess_equals_sam3_processor_transform(rng):
    from sam3.model.sam3_image_processor import Sam3Processor
    from torchvision.transforms import v2

    proc = Sam3Processor(model=None, resolution=224, device="cpu")
    img = random_image(rng, 181, 263)
    want = proc.transform(v2.functional.to_image(img)).unsqueeze(0)
    got, info = preprocess(img, 224, torch.device("cpu"))
    # Identical resampling; the normalisation differs by at most one float32 ulp.
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert (info.scale_x, info.scale_y, info.source_hw) == (263.0, 181.0, (181, 263))


def test_postprocess_threshold_nms_topk():
    # Two classes; class 0 has two overlapping boxes, class 1 one box overlapping class 0's best.
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.7, 0.05, 0.02]])
    boxes = torch.tensor(
        [
            [[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]],
            [[0.5, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1], [0.2, 0.2, 0.1, 0.1]],
        ]
    )

    def run(**kw):
        b, s, c = postprocess(scores, boxes, (100.0, 50.0), (50, 100), PostprocessParams(**kw))
        return b, s.tolist(), c.tolist()

    b, s, c = run(confidence_threshold=0.3, nms_iou=1.0)
    assert s == pytest.approx([0.9, 0.8, 0.7]) and c == [0, 0, 1]
    np.testing.assert_allclose(b[0].numpy(), [40, 20, 60, 30], atol=1e-4)
    assert run(confidence_threshold=0.3, nms_iou=0.5)[2] == [0, 1]  # per class
    assert run(confidence_threshold=0.3, nms_iou=0.5, nms_mode="agnostic")[2] == [0]
    assert run(confidence_threshold=0.3, nms_iou=0.5, nms_mode="grouped", nms_groups=((0, 1),))[2] == [0]
    assert run(confidence_threshold=0.3, nms_iou=0.5, nms_mode="grouped", nms_groups=((1,),))[2] == [0, 1]
    assert run(confidence_threshold=0.0, nms_iou=1.0, max_detections=2)[1] == pytest.approx([0.9, 0.8])
    assert len(run(confidence_threshold=0.95)[1]) == 0
    # Clipping: a box beyond the image is clipped to it.
    b, _, _ = postprocess(
        torch.tensor([[0.9]]),
        torch.tensor([[[0.95, 0.5, 0.3, 0.3]]]),
        (100.0, 50.0),
        (50, 100),
        PostprocessParams(confidence_threshold=0.0),
    )
    assert b[0, 2] == 100.0


def test_library_never_imports_ros():
    code = (
        "import sys; sys.modules['rclpy'] = None\n"
        "import dart_ros.detector, dart_ros.reference, dart_ros.model.registry\n"
        "assert not any(m.startswith('rclpy') for m in sys.modules if sys.modules[m] is not None)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
