"""The tracker on synthetic sequences of known truth (crossings, an occlusion with weak detections,
missed detections, clutter): MOTA, IDF1 and ID switches from py-motmetrics, with thresholds; IDs
unique and never reused across vocabulary changes; per-class and class-agnostic pools."""

import numpy as np
import pytest

from dart_ros.tracking import Tracker, TrackerConfig, iou_matrix


def scene(seed=0, frames=80, miss=0.1, noise=1.5):
    """Frames of (gt [(id, xyxy)], detections [(xyxy, score, label)]).

    Objects 1 and 2 (same class) cross each other; object 3 is hidden behind an occluder for
    frames 30-39 and seen only weakly (score 0.3) just before and after; object 4 is a car.
    Every detection is missed with probability ``miss``; one false positive every 10 frames."""
    rng = np.random.default_rng(seed)
    paths = {
        1: ((20, 100), (5.0, 0.5), (40, 90), "person"),
        2: ((420, 130), (-5.0, -0.3), (40, 90), "person"),
        3: ((50, 300), (4.0, 0.0), (50, 100), "person"),
        4: ((500, 380), (-3.0, -1.0), (90, 50), "car"),
    }
    out = []
    for f in range(frames):
        gt, dets = [], []
        for oid, ((x0, y0), (vx, vy), (w, h), label) in paths.items():
            x, y = x0 + vx * f, y0 + vy * f
            box = np.array([x, y, x + w, y + h])
            gt.append((oid, box))
            score = 0.9
            if oid == 3 and 30 <= f < 40:
                continue  # fully occluded: no detection
            if oid == 3 and (26 <= f < 30 or 40 <= f < 43):
                score = 0.3  # partly occluded: a weak detection
            if rng.random() < miss:
                continue
            dets.append((box + rng.normal(0, noise, 4), score, label))
        if f % 10 == 5:
            x, y = rng.uniform(0, 500, 2)
            dets.append((np.array([x, y, x + 30, y + 30]), 0.55, "person"))
        out.append((gt, dets))
    return out


def run(tracker, frames):
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    for gt, dets in frames:
        boxes = np.array([d[0] for d in dets]).reshape(-1, 4)
        ids = tracker.update(boxes, np.array([d[1] for d in dets]), [d[2] for d in dets])
        hyp = [(i, b) for i, b in zip(ids, boxes, strict=True) if i is not None]
        # MOTChallenge's matching: distance 1 - IoU, no match below IoU 0.5 (motmetrics'
        # own iou_matrix uses a function numpy 2 removed)
        gt_boxes, hyp_boxes = np.array([b for _, b in gt]).reshape(-1, 4), np.array([b for _, b in hyp]).reshape(-1, 4)
        dist = 1.0 - iou_matrix(gt_boxes, hyp_boxes)
        dist[dist > 0.5] = np.nan
        acc.update([g for g, _ in gt], [i for i, _ in hyp], dist)
    summary = mm.metrics.create().compute(acc, metrics=["mota", "idf1", "num_switches"], name="s")
    return {k: float(summary[k].iloc[0]) for k in ("mota", "idf1", "num_switches")}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tracking_quality_on_crossings_occlusion_and_misses(seed):
    m = run(Tracker(), scene(seed))
    # thresholds of the requirement; the occluded object is invisible for 10 frames and
    # 10 % of detections are missed, so a perfect 1.0 is out of reach by construction
    assert m["mota"] >= 0.75 and m["idf1"] >= 0.85 and m["num_switches"] <= 1, m


def test_the_low_score_pass_keeps_an_occluded_track():
    """Without the second pass (low threshold = high threshold) the weakly seen object loses its
    ID at the occlusion; with it, the track survives."""
    frames = scene(0, miss=0.0)
    with_low = run(Tracker(), frames)
    without = run(Tracker(TrackerConfig(low_threshold=0.5)), frames)
    assert with_low["num_switches"] < without["num_switches"] or with_low["idf1"] > without["idf1"], (with_low, without)


def test_ids_are_unique_never_reused_and_survive_vocabulary_changes():
    tracker = Tracker()
    box = np.array([[10.0, 10, 50, 90]])
    first = tracker.update(box, [0.9], ["person"])
    assert first == [1]
    assert tracker.update(box + 2, [0.9], ["person"]) == [1]  # same object, same ID
    # the vocabulary changes: "person" is gone, "worker" appears at the same place
    seen = set()
    for _ in range(3):
        seen.update(i for i in tracker.update(box + 3, [0.9], ["worker"]) if i is not None)
    assert seen and 1 not in seen  # a new class gets a new track, never an old ID
    for _ in range(40):  # "person" ages out
        tracker.update(np.zeros((0, 4)), [], [])
    again = [i for _ in range(2) for i in tracker.update(box, [0.9], ["person"]) if i is not None]
    assert again and min(again) > max(seen)  # IDs only grow


def test_per_class_pools_and_class_agnostic_mode():
    a = np.array([[10.0, 10, 60, 60]])
    per_class = Tracker(TrackerConfig(per_class=True))
    assert per_class.update(a, [0.9], ["cat"]) == [1]
    per_class.update(a, [0.9], ["dog"])
    assert per_class.update(a, [0.9], ["dog"]) == [2]  # another class: another track
    agnostic = Tracker(TrackerConfig(per_class=False))
    assert agnostic.update(a, [0.9], ["cat"]) == [1]
    assert agnostic.update(a, [0.9], ["dog"]) == [1]  # the label flickers, the object is the same


def test_iou_matrix():
    a = np.array([[0.0, 0, 10, 10]])
    b = np.array([[0.0, 0, 10, 10], [5.0, 0, 15, 10], [20.0, 20, 30, 30]])
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 1 / 3, 0.0]])


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="low <= high"):
        Tracker(TrackerConfig(low_threshold=0.6, high_threshold=0.5))
