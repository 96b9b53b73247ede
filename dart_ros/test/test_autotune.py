"""PersistentTuner: the fastest configuration per key, timed once, kept on disk for later processes."""

import json
import os

import pytest

from dart_ros.runtime.autotune import PersistentTuner


class Timer:
    """Times a config by running it: the run records which config it was, the time comes from a table."""

    def __init__(self, ms_by_config):
        self.ms_by_config = ms_by_config
        self.ran = []

    def __call__(self, fn):
        fn()
        return self.ms_by_config[self.ran[-1]]


def tuner(folder, timer, version="v1", configs=("a", "b", "c")):
    return PersistentTuner("kernel", configs, version=version, timer=timer, folder=str(folder))


def test_times_each_config_once_per_key_and_keeps_the_fastest(tmp_path):
    timer = Timer({"a": 3.0, "b": 1.0, "c": 2.0})
    t = tuner(tmp_path, timer)
    assert t.choose(("gpu", 5184), timer.ran.append) == "b"
    assert timer.ran == ["a", "b", "c"]
    assert t.choose(("gpu", 5184), timer.ran.append) == "b"  # remembered: no second timing
    assert len(timer.ran) == 3
    assert t.timings[str(("gpu", 5184))] == [3.0, 1.0, 2.0]
    with open(t.path()) as f:
        assert json.load(f) == {str(("gpu", 5184)): 1}


def test_a_later_process_reads_the_choice_instead_of_timing(tmp_path):
    first = Timer({"a": 1.0, "b": 2.0, "c": 3.0})
    tuner(tmp_path, first).choose(("gpu", 576), first.ran.append)
    tuner(tmp_path, first).choose(("gpu", 5184), first.ran.append)  # both keys in one file

    def must_not_time(fn):
        raise AssertionError("timed although the choice was stored")

    later = tuner(tmp_path, must_not_time)
    assert later.choose(("gpu", 576), lambda c: None) == "a"
    assert later.choose(("gpu", 5184), lambda c: None) == "a"
    # another kernel version or another set of configs: stored choices do not apply
    again = Timer({"a": 5.0, "b": 4.0, "c": 6.0})
    assert tuner(tmp_path, again, version="v2").choose(("gpu", 576), again.ran.append) == "b"
    assert again.ran == ["a", "b", "c"]
    other = Timer({"a": 5.0, "b": 4.0, "d": 1.0})
    assert tuner(tmp_path, other, configs=("a", "b", "d")).choose(("gpu", 576), other.ran.append) == "d"


def test_configs_that_fail_are_skipped_and_all_failing_is_an_error(tmp_path):
    timer = Timer({"a": 1.0, "b": 2.0, "c": 3.0})

    def run(config):
        if config == "a":
            raise RuntimeError("out of resources")
        timer.ran.append(config)

    assert tuner(tmp_path, timer).choose("k", run) == "b"

    def fail(config):
        raise RuntimeError("out of resources")

    with pytest.raises(RuntimeError, match="no configuration runs"):
        tuner(tmp_path / "other", timer).choose("k", fail)


def test_a_corrupt_or_read_only_cache_costs_only_the_timing(tmp_path, caplog):
    t = tuner(tmp_path, Timer({"a": 1.0, "b": 2.0, "c": 3.0}))
    os.makedirs(os.path.dirname(t.path()), exist_ok=True)
    with open(t.path(), "w") as f:
        f.write("{not json")
    timer = Timer({"a": 2.0, "b": 1.0, "c": 3.0})
    assert tuner(tmp_path, timer).choose("k", timer.ran.append) == "b"
    assert timer.ran == ["a", "b", "c"]
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the folder should be
    timer = Timer({"a": 2.0, "b": 1.0, "c": 3.0})
    assert tuner(blocked / "sub", timer).choose("k", timer.ran.append) == "b"
    assert "could not keep" in caplog.text


def test_a_version_given_as_a_callable_is_read_once_and_may_fail(tmp_path):
    calls = []

    def version():
        calls.append(1)
        return "v1"

    timer = Timer({"a": 2.0, "b": 1.0, "c": 3.0})
    t = tuner(tmp_path, timer, version=version)
    t.choose("k", timer.ran.append)
    t.choose("k2", timer.ran.append)
    assert len(calls) == 1
    assert tuner(tmp_path, timer).path() == t.path()  # the same file as the string "v1"

    def broken():
        raise RuntimeError("no source hash under this Triton")

    timer = Timer({"a": 2.0, "b": 1.0, "c": 3.0})
    assert tuner(tmp_path, timer, version=broken).choose("k", timer.ran.append) == "b"


class Config:
    """Like triton.Config: a readable str, the default (address) repr."""

    def __init__(self, block):
        self.block = block

    def __str__(self):
        return f"BLOCK: {self.block}"


def test_the_file_is_named_by_what_configs_say_not_where_they_live(tmp_path):
    a = PersistentTuner("k", [Config(64), Config(128)], version="v", folder=str(tmp_path))
    b = PersistentTuner("k", [Config(64), Config(128)], version="v", folder=str(tmp_path))
    assert a.path() == b.path()
    assert PersistentTuner("k", [Config(64), Config(256)], version="v", folder=str(tmp_path)).path() != a.path()
