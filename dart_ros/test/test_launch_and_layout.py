"""Launch logic without ``launch``, preset parameter files, and the one-way import rule."""

import ast
import glob
import os

import pytest
import yaml

from dart_ros.config import DetectorConfig
from dart_ros.presets import LAUNCH_BACKBONES, PRESETS
from dart_ros.ros.launch_logic import detector_launch, parse_classes, preset_file
from dart_ros.ros.params import NodeConfig, _config_value, parameter_fields

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "config")


def test_parse_classes():
    assert parse_classes("person, forklift") == ["person", "forklift"]
    assert parse_classes("[person,  traffic   light, 'dog']") == ["person", "traffic light", "dog"]
    assert parse_classes("") == []


@pytest.mark.parametrize("backbone", LAUNCH_BACKBONES)
def test_every_launch_backbone_has_a_valid_parameter_file(backbone):
    assert backbone in PRESETS
    with open(preset_file(backbone, CONFIG)) as f:
        params = yaml.safe_load(f)["/**"]["ros__parameters"]
    fields = {f.name: (owner, cfg) for owner, cfg, f in parameter_fields()}
    det, node = {}, {}
    for k, v in params.items():
        assert k in fields, f"{backbone}.yaml: {k} is not a parameter"
        owner, cfg = fields[k]
        (det if owner == "detector" else node)[k] = _config_value(k, v, getattr(cfg, k))
    assert params["backbone"] == backbone
    DetectorConfig(**det).validate()
    NodeConfig(**node).validate()


def test_launch_maps_arguments_onto_parameters_and_remaps():
    [node] = detector_launch(
        backbone="repvit_m2_3",
        image="/cam/color",
        classes="person, forklift",
        sam3_checkpoint="/m/sam3.pt",
        directory=CONFIG,
    )
    assert (node.package, node.executable, node.name) == ("dart_ros", "detector_node", "dart")
    assert node.parameters[0].endswith("repvit_m2_3.yaml")
    assert node.parameters[-1] == {"classes": ["person", "forklift"], "sam3_checkpoint": "/m/sam3.pt"}
    assert node.remappings == [("image", "/cam/color")]
    [node, rviz] = detector_launch(
        backbone="vit_h", image="/cam/color", compressed=True, use_rviz=True, directory=CONFIG
    )
    assert node.remappings == [("image/compressed", "/cam/color/compressed")]
    assert node.parameters[-1] == {"input_transport": "compressed"}
    assert rviz.executable == "rviz2" and rviz.arguments[1].endswith("dart.rviz")
    [lc] = detector_launch(backbone="tiny", lifecycle=True, autostart=False, directory=CONFIG)
    assert lc.executable == "detector_lifecycle_node" and lc.parameters[-1] == {"autostart": False}
    with pytest.raises(ValueError, match="not one of"):
        detector_launch(backbone="resnet50", directory=CONFIG)


def _imports(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


LIBRARY = os.path.join(ROOT, "dart_ros")
ROS_LAYER = os.path.join(LIBRARY, "ros")


def _python_files(*folders):
    for folder in folders:
        yield from glob.glob(os.path.join(folder, "**", "*.py"), recursive=True)


def test_ros_layer_has_no_tensor_code():
    for path in _python_files(ROS_LAYER):
        bad = [m for m in _imports(path) if m.split(".")[0] in ("torch", "torchvision", "sam3", "timm")]
        assert not bad, f"{os.path.basename(path)} imports {bad}"


def test_library_never_imports_the_ros_layer():
    """The library (everything outside dart_ros/ros) runs without ROS: no rclpy, no messages, and no
    import of dart_ros.ros, at module level or inside functions."""
    for path in _python_files(LIBRARY):
        if path.startswith(ROS_LAYER + os.sep):
            continue
        bad = [
            m
            for m in _imports(path)
            if m.split(".")[0] in ("rclpy", "sensor_msgs", "vision_msgs", "std_msgs", "dart_ros_interfaces")
            or m == "dart_ros.ros"
            or m.startswith("dart_ros.ros.")
        ]
        assert not bad, f"{os.path.relpath(path, ROOT)} imports {bad}"


def _detector_privates():
    """Names of the Detector's private attributes and methods (``self._x`` in detector.py)."""
    tree = ast.parse(open(os.path.join(LIBRARY, "detector.py")).read())
    return {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and getattr(n.value, "id", None) == "self"
        and n.attr.startswith("_")
        and not n.attr.startswith("__")
    }


def test_nothing_outside_the_detector_reaches_into_its_privates():
    """Tools, the node, the pipeline and the tests use the Detector's public API: no ``x._name`` of
    a Detector private outside detector.py (``self._name`` of other classes aside). A private reached
    from outside means a seam is missing."""
    privates = _detector_privates()
    assert {"_vocab", "_pipeline", "_require_vocab"} <= privates
    uses = []
    for path in _python_files(LIBRARY, os.path.join(ROOT, "offline"), os.path.join(ROOT, "test")):
        if path == os.path.join(LIBRARY, "detector.py"):
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in privates
                and getattr(node.value, "id", None) not in ("self", "cls")
            ):
                uses.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} .{node.attr}")
    assert not uses, uses
