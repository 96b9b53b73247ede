"""Per-class thresholds and prompt aliases: several prompts merged into one output class (best score
survives NMS across them), a threshold per class replacing the global one, both validated, both
kept or rejected as a whole with the rest of the vocabulary."""

import numpy as np
import pytest
import torch

from conftest import make_detector, random_image
from dart_ros.config import format_class_spec, parse_class_spec
from dart_ros.detector import InvalidClassesError
from dart_ros.postprocess import PostprocessParams, postprocess


def test_class_specs_parse_and_format():
    assert parse_class_spec("person") == ("person", ["person"])
    assert parse_class_spec(" person = person |  pedestrian| worker ") == ("person", ["person", "pedestrian", "worker"])
    assert format_class_spec("person", ["person", "worker"]) == "person=person|worker"
    assert format_class_spec("car", ["car"]) == "car"


def boxes_at(*centres):
    return torch.tensor([[[cx, 0.5, 0.2, 0.2] for cx in row] for row in centres])


def test_row_thresholds_replace_the_global_one_per_row():
    scores = torch.tensor([[0.5, 0.2], [0.5, 0.2]])
    boxes = boxes_at([0.2, 0.8], [0.2, 0.8])
    base = PostprocessParams(confidence_threshold=0.3, nms_iou=1.0)
    _, s, ids = postprocess(scores, boxes, (100.0, 100.0), (100, 100), base)
    assert ids.tolist() == [0, 1]
    params = PostprocessParams(confidence_threshold=0.3, nms_iou=1.0, row_thresholds=(0.1, 0.6))
    _, s, ids = postprocess(scores, boxes, (100.0, 100.0), (100, 100), params)
    assert ids.tolist() == [0, 0] and s.tolist() == pytest.approx([0.5, 0.2])


def test_merged_rows_become_one_class_and_the_best_overlapping_box_survives():
    scores = torch.tensor([[0.6, 0.0], [0.9, 0.4]])  # rows 0 and 1 are prompts of class 0
    boxes = boxes_at([0.5, 0.1], [0.51, 0.9])  # row 0 q0 and row 1 q0 overlap
    params = PostprocessParams(confidence_threshold=0.3, nms_iou=0.5, row_classes=(0, 0))
    b, s, ids = postprocess(scores, boxes, (100.0, 100.0), (100, 100), params)
    assert ids.tolist() == [0, 0] and s.tolist() == pytest.approx([0.9, 0.4])
    assert b[0, 0].item() == pytest.approx(41.0)  # the 0.9 box, not the 0.6 one


@pytest.fixture(scope="module")
def det():
    return make_detector("tiny", confidence_threshold=0.3)


def test_aliases_merge_into_one_output_class(det):
    img = random_image(np.random.default_rng(4), 160, 200)
    got = det.set_classes(["person=person|pedestrian|worker", "car"])
    assert got == ["person", "car"] and det.classes == ["person", "car"]
    assert det.class_specs == ["person=person|pedestrian|worker", "car"]
    assert det.vocabulary.prompts == ("person", "pedestrian", "worker", "car")
    merged = det.detect(img)
    assert set(merged.class_names) == {"person", "car"} and set(merged.class_ids.tolist()) <= {0, 1}
    # the same image with the prompts as separate classes: merged detections are their union
    # relabelled, minus the boxes NMS removes across the merged prompts
    det.set_classes(["person", "pedestrian", "worker", "car"])
    separate = det.detect(img)
    to_out = np.array([0, 0, 0, 1])[separate.class_ids]
    assert len(merged) <= len(separate)
    assert sorted(merged.scores.tolist())[-1] == pytest.approx(sorted(separate.scores.tolist())[-1])
    for c in (0, 1):
        if (to_out == c).any():
            assert merged.scores[merged.class_ids == c].max() == pytest.approx(separate.scores[to_out == c].max())


def test_per_class_thresholds(det):
    img = random_image(np.random.default_rng(5), 160, 200)
    det.set_classes(["person", "car"])
    det.update(confidence_threshold=0.0)
    everything = det.detect(img)
    person_scores = np.sort(everything.scores[everything.class_ids == 0])
    cut = float(np.median(person_scores))
    det.set_classes(["person", "car"], thresholds=[cut, 0.0])
    assert det.class_thresholds == [cut, 0.0]
    got = det.detect(img)
    assert (got.scores[got.class_ids == 0] > cut).all()
    assert (got.class_ids == 0).sum() == (person_scores > cut).sum()
    assert (got.class_ids == 1).sum() == (everything.class_ids == 1).sum()
    det.set_classes(["person", "car"])  # no thresholds: the global one again
    assert det.class_thresholds == [] and len(det.detect(img)) == len(everything)
    det.update(confidence_threshold=0.3)


@pytest.mark.parametrize(
    "names,thresholds,message",
    [
        (["person", "car"], [0.3], "1 thresholds for 2 classes"),
        (["person", "car"], [0.3, 1.5], r"class 'car': threshold must be in \[0, 1\)"),
        (["person=person|worker", "staff=worker"], None, "prompt 'worker' belongs to two classes"),
        (["person=", "car"], None, "has no prompts"),
        (["=person"], None, "class 0 is empty"),
        (["a=" + "|".join(f"p{i}" for i in range(1001))], None, "1001 prompts requested; the limit is 1000"),
    ],
)
def test_bad_thresholds_and_aliases_keep_the_previous_vocabulary(det, names, thresholds, message):
    det.set_classes(["dog"])
    version = det.vocabulary_version
    with pytest.raises(InvalidClassesError, match=message):
        det.set_classes(names, thresholds=thresholds)
    assert det.classes == ["dog"] and det.vocabulary_version == version
