"""offline/ros_benchmark.py end to end: a bag, the detector node started by the tool, real DDS."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import random_image
from ros_util import require_ros

pytestmark = pytest.mark.ros

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_bag(path, frames=4):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    Img, Header, Time = (
        ts.types["sensor_msgs/msg/Image"],
        ts.types["std_msgs/msg/Header"],
        ts.types["builtin_interfaces/msg/Time"],
    )
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection("/cam/image_raw", Img.__msgtype__, typestore=ts)
        for i in range(frames):
            arr = random_image(np.random.default_rng(i), 96, 128)
            msg = Img(
                header=Header(stamp=Time(sec=100 + i, nanosec=0), frame_id="bagcam"),
                height=96,
                width=128,
                encoding="rgb8",
                is_bigendian=0,
                step=384,
                data=arr.reshape(-1),
            )
            w.write(conn, i * 10**8, ts.serialize_cdr(msg, Img.__msgtype__))


def _tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ros_benchmark", os.path.join(ROOT, "offline", "ros_benchmark.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("msg_type, topic", [("Image", "/cam/x"), ("CompressedImage", "/cam/x/compressed")])
def test_the_started_node_reads_the_played_topic(msg_type, topic):
    params, remaps = _tool().node_launch(
        msg_type, topic, ["backbone=tiny", "classes=[a, b]", "confidence_threshold=0.2"]
    )
    assert remaps == {"image": "/cam/x"}  # image_transport naming: the node appends /compressed
    assert params["backbone"] == "tiny" and params["classes"] == ["a", "b"] and params["confidence_threshold"] == 0.2
    assert params.get("input_transport") == ("compressed" if msg_type == "CompressedImage" else None)
    with pytest.raises(SystemExit):
        _tool().node_launch(msg_type, topic, ["backbone"])
    if msg_type == "CompressedImage":
        with pytest.raises(SystemExit, match="must be named"):
            _tool().node_launch(msg_type, "/cam/jpeg", [])


# Timing over DDS with a CPU node on a shared 2-core machine: an occasional stall of the node
# loses frames at a probe (seen with this test's code before and after the package restructure);
# a rerun tells a stall from a broken tool.
@pytest.mark.flaky(reruns=2)
def test_rate_search_and_fixed_rates_against_the_node(tmp_path):
    require_ros()
    bag, out = tmp_path / "bag", tmp_path / "bench"
    write_bag(bag)
    cmd = [
        sys.executable,
        os.path.join(ROOT, "offline", "ros_benchmark.py"),
        "--bag",
        str(bag),
        "--topic",
        "/cam/image_raw",
        "--frames",
        "4",
        "--start-node",
        "--param",
        "backbone=tiny",
        "--param",
        "device=cpu",
        "--param",
        "classes=[person, car]",
        "--lower",
        "2",
        "--upper",
        "6",
        "--width",
        "2",
        "--step",
        "1",
        "--duration",
        "3",
        "--min-frames",
        "8",
        # The test checks the tool end to end, not the machine's timing: a CPU node on a shared
        # 2-core machine may answer a frame late or drop one at the lowest rate.
        "--rate-tolerance",
        "0.5",
        "--max-missed",
        "0.4",
        "--drain-s",
        "2",
        "--fixed-rates",
        "2",
        "--iterations",
        "3",
        "--node-timeout-s",
        "120",
        "--library",
        "--library-s",
        "1",
        "--out",
        str(out),
    ]
    node_log = tmp_path / "bench_node.log"
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(
            f"benchmark timed out:\n{e.stdout}\n{e.stderr}\n{node_log.read_text()[-2000:] if node_log.exists() else ''}"
        )
    log = node_log.read_text() if node_log.exists() else ""
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + log[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert report["environment"]["source"]["frames"] == 4
    # every output was paired with its input by the key the tool wrote into the header
    lower = report["search"]["probes"][0]
    assert lower["rate_hz"] == 2.0 and lower["passed"] and lower["received"] >= 0.6 * lower["sent"]
    assert 2.0 <= report["max_rate_hz"] <= 6.0
    rates = [r["rate_hz"] for r in report["fixed_rates"]]
    assert 2.0 in rates and report["max_rate_hz"] in rates
    for row in report["fixed_rates"]:
        assert len(row["iterations"]) == 3
        assert 0.0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"] < 10_000
    assert "max sustainable input rate" in res.stdout
    start = report["node_start"]  # the node's start-up as a user sees it
    assert 0 < start["to_subscribed_s"] < start["to_first_detection_s"] < 240
    assert "node start: subscribed after" in res.stdout
    # the library alone with the node's settings on the same frames, and the host costs per frame
    lib = report["library"]
    assert lib["pipelining"] is False and lib["from_arrays_fps"] > 0 and lib["from_messages_fps"] > 0
    assert lib["message_bytes"] > 96 * 128 * 3 and lib["deserialize_ms"] > 0 and lib["decode_ms"] >= 0
    assert "the library alone (sequential" in res.stdout
