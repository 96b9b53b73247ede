"""The rate search of the ROS benchmark (dart_ros.evaluation.rate_search) on a simulated node."""

import pytest

from dart_ros.evaluation.rate_search import conclude, passes, probe_result, search_max_rate


def simulated_node(capacity_hz: float, seconds: float = 5.0):
    """A probe of a node that needs 1/capacity s per frame and, while busy, keeps only the newest
    waiting frame (depth-1 subscription, as the detector node)."""
    work = 1.0 / capacity_hz

    def probe(rate: float):
        n = max(10, int(seconds * rate))
        sent = {i: i / rate for i in range(n)}
        received, free_at, pending = {}, 0.0, None
        for i, t in sent.items():
            if pending is not None and free_at <= t:  # the waiting frame started when the node got free
                free_at += work
                received[pending] = free_at
                pending = None
            if free_at <= t:
                free_at = t + work
                received[i] = free_at
            else:
                pending = i  # replaces (drops) an older waiting frame
        if pending is not None:
            received[pending] = free_at + work
        return probe_result(rate, sent, received)

    return probe


def test_probe_metrics_pair_outputs_with_inputs_by_key():
    sent = {0: 0.0, 1: 0.1, 2: 0.2, 3: 0.3}
    received = {0: 0.05, 1: 0.16, 3: 0.38, 99: 0.5}  # key 99: a late answer to an earlier probe
    r = probe_result(10.0, sent, received)
    assert (r.sent, r.received, r.missed) == (4, 3, 1)
    assert r.latency_ms["min"] == pytest.approx(50) and r.latency_ms["max"] == pytest.approx(80)
    assert r.latency_ms["p50"] == pytest.approx(60)
    assert r.playback_hz == pytest.approx(10.0)
    assert r.output_hz == pytest.approx(2 / 0.33)
    assert r.jitter_ms["max"] == pytest.approx(abs(0.22 - 0.11) * 1e3)


def test_a_probe_passes_with_at_most_five_percent_missing():
    sent = {i: i * 0.1 for i in range(20)}
    one_missing = probe_result(10.0, sent, {k: t + 0.01 for k, t in sent.items() if k != 7})
    two_missing = probe_result(10.0, sent, {k: t + 0.01 for k, t in sent.items() if k not in (7, 8)})
    assert passes(one_missing) and not passes(two_missing)
    assert not passes(probe_result(10.0, sent, {}))


@pytest.mark.parametrize("capacity", [2.5, 17.0, 61.0])
def test_search_finds_the_capacity_of_a_simulated_node(capacity):
    found = search_max_rate(simulated_node(capacity), lower=1.0, upper=120.0, width=2.0, step=0.5)
    assert found.max_rate_hz is not None and not found.at_upper_bound
    assert capacity * 0.85 <= found.max_rate_hz <= capacity * 1.06  # up to the 5 % drops allowed
    assert all(r.sent for r in found.probes) and len(found.passed) == len(found.probes)
    # every passing probe at or below the answer, none above it passed
    assert all(r.rate_hz <= found.max_rate_hz for r, ok in zip(found.probes, found.passed, strict=True) if ok)


def test_search_reports_the_bounds():
    assert search_max_rate(simulated_node(0.5), 1.0, 10.0, 1.0, 0.5).max_rate_hz is None
    at_top = search_max_rate(simulated_node(500.0), 1.0, 10.0, 1.0, 0.5)
    assert at_top.max_rate_hz == 10.0 and at_top.at_upper_bound
    with pytest.raises(ValueError):
        search_max_rate(simulated_node(5.0), 10.0, 1.0, 1.0, 0.5)


def test_conclude_drops_the_best_and_the_worst_iteration():
    assert conclude([1.0, 2.0, 3.0, 100.0]) == pytest.approx(2.5)
    assert conclude([5.0, 1.0, 9.0], "max") == 5.0
    assert conclude([4.0, 6.0], "min") == 4.0
