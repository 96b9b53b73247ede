"""Launch logic without ``launch``, preset parameter files, and the one-way import rule."""

import ast
import glob
import os
import re

import pytest

from dart_ros.presets import LAUNCH_BACKBONES, PRESETS
from dart_ros.ros.launch_logic import detector_launch, parse_classes, preset_file
from dart_ros.ros.params import configs_from_values, read_params_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "config")


def test_parse_classes():
    assert parse_classes("person, forklift") == ["person", "forklift"]
    assert parse_classes("[person,  traffic   light, 'dog']") == ["person", "traffic light", "dog"]
    assert parse_classes("") == []


@pytest.mark.parametrize("backbone", LAUNCH_BACKBONES)
def test_every_launch_backbone_has_a_valid_parameter_file(backbone):
    assert backbone in PRESETS
    values = read_params_file(preset_file(backbone, CONFIG))
    assert values["backbone"] == backbone
    det, node = configs_from_values(values)  # every key a parameter, every value valid
    assert det.backbone == backbone and node.input_transport == values.get("input_transport", "raw")


def test_parameter_files_and_overrides_map_onto_the_configs(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "/**:\n  ros__parameters:\n    backbone: tiny\n    nms_iou: 0.5\n    classes: [a, b]\n"
        "dart:\n  ros__parameters:\n    nms_iou: 0.6\n    pipelining: true\n"
        "other:\n  ros__parameters:\n    nms_iou: 0.9\n"
    )
    values = read_params_file(str(path))
    assert values == {"backbone": "tiny", "nms_iou": 0.6, "classes": ["a", "b"], "pipelining": True}
    det, node = configs_from_values({**values, "max_detections": 7, "skip_blocks": "1,2"})
    assert (det.backbone, det.nms_iou, det.classes, det.max_detections, det.skip_blocks) == (
        "tiny", 0.6, ["a", "b"], 7, (1, 2),
    )  # fmt: skip
    assert node.pipelining is True
    with pytest.raises(ValueError, match="not parameters of the detector node: bakbone"):
        configs_from_values({"bakbone": "tiny"})
    with pytest.raises(ValueError):
        configs_from_values({"nms_iou": 2.0})


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
    assert node.remappings[0] == ("image", "/cam/color")
    [node, rviz] = detector_launch(
        backbone="vit_h", image="/cam/color", compressed=True, use_rviz=True, directory=CONFIG
    )
    assert node.remappings[0] == ("image", "/cam/color")  # the node subscribes to /cam/color/compressed
    assert node.parameters[-1] == {"input_transport": "compressed"}
    assert rviz.executable == "rviz2" and rviz.arguments[1].endswith("dart.rviz")
    [node] = detector_launch(backbone="tiny", depth=True, directory=CONFIG)
    assert node.parameters[-1] == {"depth_3d": True}
    assert ("depth/image", "/camera/aligned_depth_to_color/image_raw") in node.remappings
    assert ("depth/camera_info", "/camera/aligned_depth_to_color/camera_info") in node.remappings
    [node, rviz] = detector_launch(
        backbone="tiny", cameras="front=/cf/color/image_raw/compressed, rear", use_rviz=True, directory=CONFIG
    )
    assert node.parameters[-1] == {"cameras": ["front", "rear"]}
    assert node.remappings == [("front/image", "/cf/color/image_raw")]  # rear reads <ns>/rear/image
    assert "/dart/front/image_annotated" in open(rviz.arguments[1]).read()
    with pytest.raises(ValueError, match="cameras:=front, front: camera names repeat"):
        detector_launch(cameras="front, front", directory=CONFIG)
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


# A value other than the default for every launch argument (autostart matters only with lifecycle).
NON_DEFAULT = {
    "backbone": "repvit_m2_3",
    "image": "/cam/other",
    "compressed": "true",
    "classes": "person, forklift",
    "class_thresholds": "0.4, 0.2",
    "tracking": "per_class",
    "cameras": "front=/cf/image_raw, rear",
    "depth": "true",
    "depth_image": "/cam/depth/image_rect_raw",
    "depth_camera_info": "/cam/depth/camera_info",
    "sam3_checkpoint": "/m/sam3.pt",
    "backbone_checkpoint": "/m/student.pt",
    "device": "cpu",
    "params_file": "/m/extra.yaml",
    "namespace": "robot1",
    "node_name": "det",
    "use_sim_time": "true",
    "use_rviz": "true",
    "lifecycle": "true",
    "autostart": "false",
}


def test_every_declared_launch_argument_changes_what_is_launched():
    from dart_ros.ros.launch_logic import LAUNCH_ARGUMENTS, launch_from_arguments

    assert set(NON_DEFAULT) == set(LAUNCH_ARGUMENTS)
    for name, value in NON_DEFAULT.items():
        base = {"lifecycle": "true"} if name == "autostart" else {}
        assert launch_from_arguments({**base, name: value}, CONFIG) != launch_from_arguments(base, CONFIG), name
    with pytest.raises(ValueError, match="unknown launch arguments: imagee"):
        launch_from_arguments({"imagee": "/x"}, CONFIG)
    with pytest.raises(ValueError, match="must be true or false"):
        launch_from_arguments({"use_rviz": "yes please"}, CONFIG)
    with pytest.raises(ValueError, match="must be numbers"):
        launch_from_arguments({"class_thresholds": "high, low"}, CONFIG)
    (node,) = launch_from_arguments({"classes": "person=person|worker, car", "class_thresholds": "0.4, 0.2"}, CONFIG)
    assert node.parameters[-1] == {"classes": ["person=person|worker", "car"], "class_thresholds": [0.4, 0.2]}


def test_the_launch_file_declares_the_tested_arguments_and_nothing_else():
    src = open(os.path.join(ROOT, "launch", "detector.launch.py")).read()
    assert "launch_from_arguments(values)" in src and "LAUNCH_ARGUMENTS.items()" in src
    assert "DeclareLaunchArgument(k" in src and src.count("DeclareLaunchArgument(") == 1  # the loop only


def test_sim_time_reaches_the_node_and_rviz():
    from dart_ros.ros.launch_logic import launch_from_arguments

    node, rviz = launch_from_arguments({"use_sim_time": "true", "use_rviz": "true"}, CONFIG)
    assert node.parameters[-1]["use_sim_time"] is True and rviz.parameters == [{"use_sim_time": True}]
    [node] = launch_from_arguments({}, CONFIG)
    assert all("use_sim_time" not in p for p in node.parameters if isinstance(p, dict))


def test_rviz_shows_the_annotated_image_of_this_node():
    from dart_ros.ros.launch_logic import launch_from_arguments

    [_, rviz] = launch_from_arguments({"use_rviz": "true"}, CONFIG)
    assert rviz.arguments == ["-d", os.path.join(CONFIG, "dart.rviz")]
    assert "/dart/image_annotated" in open(rviz.arguments[1]).read()
    [_, rviz] = launch_from_arguments({"use_rviz": "true", "namespace": "/robot1/", "node_name": "det"}, CONFIG)
    text = open(rviz.arguments[1]).read()
    assert "/robot1/det/image_annotated" in text and "/dart/image_annotated" not in text
    assert "/robot1/det/markers_3d" in text and "/dart/markers_3d" not in text


def test_node_launch_ros_args_are_what_launch_ros_passes():
    from dart_ros.ros.launch_logic import launch_from_arguments

    [node] = launch_from_arguments(
        {"backbone": "tiny", "namespace": "robot1", "node_name": "det", "image": "/cam/x", "classes": "a, b"}, CONFIG
    )
    args = node.ros_args()
    assert args[:3] == ["--ros-args", "--params-file", os.path.join(CONFIG, "tiny.yaml")]
    assert ["-p", 'classes:=["a", "b"]'] == args[3:5]
    assert args[5:11] == ["-r", "__node:=det", "-r", "__ns:=/robot1", "-r", "image:=/cam/x"]
    assert args[11:] == ["-r", "depth/image:=/camera/aligned_depth_to_color/image_raw",
                         "-r", "depth/camera_info:=/camera/aligned_depth_to_color/camera_info"]  # fmt: skip


def test_every_node_parameter_and_launch_argument_is_documented():
    """docs/node.md's table names every parameter; the README names every launch argument."""
    from dart_ros.ros.launch_logic import LAUNCH_ARGUMENTS
    from dart_ros.ros.params import parameter_help

    docs = os.path.join(os.path.dirname(ROOT), "docs", "node.md")
    table = [ln for ln in open(docs).read().splitlines() if ln.startswith("| `")]
    documented = {name for ln in table for name in re.findall(r"`([a-z0-9_]+)`", ln.split("|")[1])}
    missing = [name for name, _, _ in parameter_help() if name not in documented]
    assert not missing, f"parameters missing from docs/node.md's table: {missing}"
    readme = open(os.path.join(os.path.dirname(ROOT), "README.md")).read()
    missing = [a for a in LAUNCH_ARGUMENTS if f"`{a}:=" not in readme]
    assert not missing, f"launch arguments missing from the README: {missing}"


def test_camera_topics_and_names():
    from dart_ros.ros.camera import camera_topics, check_camera_names
    from dart_ros.ros.params import NodeConfig

    one, front = camera_topics(), camera_topics("front")
    assert (one.image, one.detections, one.depth, one.camera_info) == (
        "image", "~/detections", "depth/image", "depth/camera_info")  # fmt: skip
    assert (front.image, front.detections, front.image_annotated, front.detections_3d, front.markers_3d) == (
        "front/image", "~/front/detections", "~/front/image_annotated", "~/front/detections_3d",
        "~/front/markers_3d")  # fmt: skip
    check_camera_names(["front", "rear_left2"])
    for bad in (["front", "front"], ["2nd"], ["front/left"], [""], ["a b"]):
        with pytest.raises(ValueError):
            check_camera_names(bad)
    with pytest.raises(ValueError, match="camera name"):
        NodeConfig(cameras=["left", "right-hand"]).validate()
    with pytest.raises(ValueError, match="depth_min_m < depth_max_m"):
        NodeConfig(depth_min_m=5.0, depth_max_m=1.0).validate()
    with pytest.raises(ValueError, match="depth_slop_s"):
        NodeConfig(depth_slop_s=-1.0).validate()
