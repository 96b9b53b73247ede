"""The correctness oracle: batched multi-class detection equals the official per-class SAM3 path.

For random weights and random images, the Detector's raw outputs and final detections for N
classes (1, 3 and 17, so chunking is exercised) must equal those of sam3's own single-prompt path
(``backbone.forward_image`` + ``forward_grounding`` per class, same prompt composition), with the
same threshold/NMS applied afterwards, within fp32 tolerance, in both prompt modes.
"""

import dataclasses

import numpy as np
import pytest
import torch

from conftest import make_detector, random_image
from dart_ros.coco import COCO_CLASSES
from dart_ros.postprocess import postprocess
from dart_ros.reference import reference_outputs

MODES = ("official", "text_only")


def gap_threshold(scores: torch.Tensor, q: float = 0.6) -> float:
    """A threshold near the q-quantile that sits in a gap between scores (robust to 1e-6 noise)."""
    s = torch.sort(scores.flatten()).values
    i = int(q * (len(s) - 1))
    gaps = s[1:] - s[:-1]
    j = i + int(torch.argmax(gaps[i : i + 10]))
    return float((s[j] + s[j + 1]) / 2)


def compare(det, image, names, mode, atol=2e-5):
    det.update(prompt_mode=mode)
    det.set_classes(names)
    pixels, info = det.preprocess(image)
    fast = det.encode_decode(det.features(pixels))
    ref = reference_outputs(det.model.sam3, pixels, names, mode)
    assert fast.logits.shape == (len(names), det.model.arch.num_queries)
    torch.testing.assert_close(fast.logits, ref.logits, atol=atol, rtol=0)
    torch.testing.assert_close(fast.boxes, ref.boxes, atol=atol, rtol=0)
    torch.testing.assert_close(fast.presence_logits, ref.presence_logits, atol=atol, rtol=0)

    params = dataclasses.replace(det.config.postprocess_params(), confidence_threshold=gap_threshold(ref.scores()))
    got = postprocess(fast.scores(), fast.boxes, (info.scale_x, info.scale_y), info.source_hw, params)
    want = postprocess(ref.scores(), ref.boxes, (info.scale_x, info.scale_y), info.source_hw, params)
    assert len(want[1]) > 0, "test setup: the threshold kept nothing"
    torch.testing.assert_close(got[1], want[1], atol=atol, rtol=0)  # sorted scores
    assert_same_detections(got, want, atol)
    # The public API gives the same result as the raw path it is built on.
    det.update(confidence_threshold=params.confidence_threshold)
    public = det.detect(image)
    np.testing.assert_array_equal(public.class_ids, got[2].cpu().numpy())
    np.testing.assert_allclose(public.scores, got[1].cpu().numpy(), atol=atol)
    np.testing.assert_allclose(public.boxes, got[0].cpu().numpy(), atol=1e-2)
    det.update(confidence_threshold=0.0)


def assert_same_detections(got, want, atol, window=8):
    """Each detection has a partner of the same class, score within ``atol`` and box within 0.01 px,
    near its rank (detections whose scores differ by less than ``atol`` may swap ranks)."""
    (gb, gs, gc), (wb, ws, wc) = ((t.cpu() for t in d) for d in (got, want))
    assert len(gs) == len(ws)
    used = set()
    for i in range(len(gs)):
        partners = [
            j
            for j in range(max(0, i - window), min(len(ws), i + window + 1))
            if j not in used and gc[i] == wc[j] and abs(gs[i] - ws[j]) <= atol and (gb[i] - wb[j]).abs().max() <= 1e-2
        ]
        assert partners, f"detection {i} (class {int(gc[i])}, score {float(gs[i]):.5f}) has no partner"
        used.add(partners[0])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [1, 3, 17])
def test_tiny_matches_official_per_class(tiny_detector, rng, mode, n):
    names = list(COCO_CLASSES[:n])
    compare(tiny_detector, random_image(rng, 241, 319), names, mode)


@pytest.mark.parametrize("backbone", ["tiny_student", "tiny_pruned"])
@pytest.mark.parametrize("mode", MODES)
def test_variants_match_official_per_class(backbone, mode, rng):
    det = make_detector(backbone, confidence_threshold=0.0, max_classes_per_chunk=2)
    compare(det, random_image(rng, 200, 150), list(COCO_CLASSES[10:15]), mode)


def test_chunk_size_does_not_change_results(rng):
    det = make_detector("tiny", confidence_threshold=0.0)
    det.set_classes(list(COCO_CLASSES[:9]))
    feat = det.features(det.preprocess(random_image(rng))[0])
    whole = det.encode_decode(feat)
    det.update(max_classes_per_chunk=2)
    chunked = det.encode_decode(feat)
    torch.testing.assert_close(chunked.logits, whole.logits, atol=2e-5, rtol=0)
    torch.testing.assert_close(chunked.boxes, whole.boxes, atol=2e-5, rtol=0)


def test_prompt_modes_differ(tiny_detector, rng):
    """The geometry token changes the outputs: the two modes are really two computations."""
    names = ["person", "car"]
    tiny_detector.set_classes(names)
    feat = tiny_detector.features(tiny_detector.preprocess(random_image(rng))[0])
    tiny_detector.update(prompt_mode="official")
    a = tiny_detector.encode_decode(feat)
    tiny_detector.update(prompt_mode="text_only")
    b = tiny_detector.encode_decode(feat)
    tiny_detector.update(prompt_mode="official")
    assert (a.logits - b.logits).abs().max() > 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_full_size_matches_official_on_gpu(mode, rng):
    det = make_detector("vit_h", device="cuda", confidence_threshold=0.0)
    assert not torch.backends.cuda.matmul.allow_tf32  # the Detector set fp32 = fp32
    compare(det, random_image(rng, 480, 640), list(COCO_CLASSES[:17]), mode, atol=2e-4)
