"""What ``launch/detector.launch.py`` starts, as plain Python (testable without ``launch``).

The launch file declares :data:`LAUNCH_ARGUMENTS` and hands their values to
:func:`launch_from_arguments`. ``backbone:=<preset>`` selects ``config/<preset>.yaml``; launch
arguments override single parameters on top of it; ``image:=`` remaps the input topic.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Tuple

from dart_ros.presets import DEFAULT_BACKBONE, LAUNCH_BACKBONES


@dataclasses.dataclass
class NodeLaunch:
    """Everything needed to start one node (mirrors launch_ros.actions.Node arguments)."""

    package: str
    executable: str
    name: str
    namespace: str
    parameters: List[object]  # YAML paths and dicts, applied in order
    remappings: List[Tuple[str, str]]
    arguments: List[str] = dataclasses.field(default_factory=list)

    def ros_args(self) -> List[str]:
        """The command-line arguments launch_ros gives the executable: ``--ros-args`` with the
        parameter files and values in order, the node name, the namespace and the remappings."""
        from dart_ros.ros.process import ros_literal

        out = list(self.arguments) + ["--ros-args"]
        for p in self.parameters:
            if isinstance(p, dict):
                for k, v in p.items():
                    out += ["-p", f"{k}:={ros_literal(v)}"]
            else:
                out += ["--params-file", str(p)]
        out += ["-r", f"__node:={self.name}"]
        if self.namespace:
            out += ["-r", f"__ns:=/{self.namespace.strip('/')}"]
        for a, b in self.remappings:
            out += ["-r", f"{a}:={b}"]
        return out

    def command(self) -> List[str]:
        """The installed executable (ament index) with :meth:`ros_args`, as ``ros2 launch`` runs it."""
        from ament_index_python.packages import get_package_prefix

        exe = os.path.join(get_package_prefix(self.package), "lib", self.package, self.executable)
        return [exe] + self.ros_args()


def parse_classes(text: str) -> List[str]:
    """``"person, forklift"`` or ``"[person, forklift]"`` -> ["person", "forklift"]."""
    text = (text or "").strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [" ".join(c.strip().strip("'\"").split()) for c in text.split(",") if c.strip().strip("'\"")]


def config_dir() -> str:
    """The installed share/dart_ros/config, or the repository's config/ when run from source."""
    try:
        from ament_index_python.packages import get_package_share_directory

        path = os.path.join(get_package_share_directory("dart_ros"), "config")
        if os.path.isdir(path):
            return path
    except Exception:  # not installed in an ament index
        pass
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "config")


def preset_file(backbone: str, directory: Optional[str] = None) -> str:
    if backbone not in LAUNCH_BACKBONES:
        raise ValueError(f"backbone:={backbone} is not one of {', '.join(LAUNCH_BACKBONES)}")
    path = os.path.join(directory or config_dir(), f"{backbone}.yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no parameter file for backbone {backbone!r}: {path}")
    return path


# The launch file's arguments: name -> (default, description). Values arrive as strings.
LAUNCH_ARGUMENTS: Dict[str, Tuple[str, str]] = {
    "backbone": (DEFAULT_BACKBONE, "one of: " + ", ".join(LAUNCH_BACKBONES)),
    "image": ("/camera/image_raw", "input image topic (sensor_msgs/Image; the base topic with compressed:=true)"),
    "compressed": ("false", "subscribe <image>/compressed (sensor_msgs/CompressedImage) instead"),
    "classes": (
        "",
        'vocabulary, e.g. "person, forklift"; a class with several prompts: "person=person|worker, forklift" '
        "(default: the preset's)",
    ),
    "class_thresholds": ("", 'a confidence threshold per class, e.g. "0.4, 0.2" (default: the global one)'),
    "tracking": ("off", "track IDs in Detection2D.id: off, per_class or agnostic"),
    "cameras": (
        "",
        'several cameras through one model: "front=/cam_front/image_raw, rear=/cam_rear/image_raw" (name=image '
        "topic; a bare name reads <name>/image); replaces image:=",
    ),
    "depth": ("false", "publish ~/detections_3d from a registered depth image and its camera_info"),
    "depth_image": ("/camera/aligned_depth_to_color/image_raw", "depth image registered to the colour image"),
    "depth_camera_info": ("/camera/aligned_depth_to_color/camera_info", "camera_info of that depth image"),
    "sam3_checkpoint": ("", "path of sam3.pt (empty: the preset file's value)"),
    "backbone_checkpoint": ("", "DART student or pruned checkpoint"),
    "device": ("", "cuda, cuda:1, cpu (empty: the preset's)"),
    "params_file": ("", "extra parameter YAML applied after the preset"),
    "namespace": ("", "namespace of the node"),
    "node_name": ("dart", "node name (services: /<node_name>/set_classes)"),
    "use_sim_time": ("false", "use /clock (bag replay with --clock)"),
    "use_rviz": ("false", "start RViz showing the annotated image"),
    "lifecycle": ("false", "run the managed (lifecycle) node"),
    "autostart": ("true", "lifecycle node: configure and activate at start"),
}


def _flag(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"{name}:={text} must be true or false")
    return value == "true"


def launch_from_arguments(values: Dict[str, str], directory: Optional[str] = None) -> List["NodeLaunch"]:
    """The nodes for launch argument values as ``ros2 launch`` hands them over (strings; missing
    ones take their defaults)."""
    unknown = sorted(set(values) - set(LAUNCH_ARGUMENTS))
    if unknown:
        raise ValueError(f"unknown launch arguments: {', '.join(unknown)}")
    v = {k: values.get(k, default) for k, (default, _) in LAUNCH_ARGUMENTS.items()}
    return detector_launch(
        backbone=v["backbone"],
        image=v["image"],
        classes=v["classes"],
        class_thresholds=v["class_thresholds"],
        tracking=v["tracking"],
        cameras=v["cameras"],
        depth=_flag("depth", v["depth"]),
        depth_image=v["depth_image"],
        depth_camera_info=v["depth_camera_info"],
        namespace=v["namespace"],
        node_name=v["node_name"],
        sam3_checkpoint=v["sam3_checkpoint"],
        backbone_checkpoint=v["backbone_checkpoint"],
        device=v["device"],
        compressed=_flag("compressed", v["compressed"]),
        params_file=v["params_file"],
        use_sim_time=_flag("use_sim_time", v["use_sim_time"]),
        use_rviz=_flag("use_rviz", v["use_rviz"]),
        lifecycle=_flag("lifecycle", v["lifecycle"]),
        autostart=_flag("autostart", v["autostart"]),
        directory=directory,
    )


def node_topic(namespace: str, node_name: str, name: str) -> str:
    """The absolute name of the node's private topic ``~/<name>``."""
    ns = "/".join(p for p in namespace.split("/") if p)
    return "/" + "/".join(p for p in (ns, node_name, name) if p)


def rviz_config(template: str, namespace: str, node_name: str, camera: str = "") -> str:
    """The RViz config showing this node's topics (the shipped file names the default node's
    ``/dart/image_annotated`` and ``/dart/markers_3d``; with several cameras, the first camera's);
    a file of its own only where that differs."""
    pairs = [
        (node_topic("", "dart", t), node_topic(namespace, node_name, f"{camera}/{t}" if camera else t))
        for t in RVIZ_TOPICS
    ]
    if all(a == b for a, b in pairs):
        return template
    with open(template) as f:
        text = f.read()
    import tempfile

    for a, b in pairs:
        text = text.replace(a, b)
    fd, path = tempfile.mkstemp(prefix="dart_", suffix=".rviz")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


RVIZ_TOPICS = ("image_annotated", "markers_3d")


def detector_launch(
    backbone: str = DEFAULT_BACKBONE,
    image: str = "/camera/image_raw",
    classes: str = "",
    class_thresholds: str = "",
    tracking: str = "off",
    cameras: str = "",
    depth: bool = False,
    depth_image: str = "/camera/aligned_depth_to_color/image_raw",
    depth_camera_info: str = "/camera/aligned_depth_to_color/camera_info",
    namespace: str = "",
    node_name: str = "dart",
    sam3_checkpoint: str = "",
    backbone_checkpoint: str = "",
    device: str = "",
    compressed: bool = False,
    params_file: str = "",
    use_sim_time: bool = False,
    use_rviz: bool = False,
    lifecycle: bool = False,
    autostart: bool = True,
    directory: Optional[str] = None,
) -> List[NodeLaunch]:
    """The nodes of ``detector.launch.py`` for the given launch arguments."""
    overrides: Dict[str, object] = {}
    if classes:
        overrides["classes"] = parse_classes(classes)
    if class_thresholds:
        try:
            overrides["class_thresholds"] = [float(t) for t in parse_classes(class_thresholds)]
        except ValueError:
            raise ValueError(f'class_thresholds:={class_thresholds} must be numbers, e.g. "0.4, 0.2"') from None
    if tracking != "off":
        from dart_ros.tracking import TRACKING_MODES

        if tracking not in TRACKING_MODES:
            raise ValueError(f"tracking:={tracking} is not one of {', '.join(TRACKING_MODES)}")
        overrides["tracking"] = tracking
    if sam3_checkpoint:
        overrides["sam3_checkpoint"] = os.path.expanduser(sam3_checkpoint)
    if backbone_checkpoint:
        overrides["backbone_checkpoint"] = os.path.expanduser(backbone_checkpoint)
    if device:
        overrides["device"] = device
    if compressed:
        overrides["input_transport"] = "compressed"
    if use_sim_time:
        overrides["use_sim_time"] = True

    def base(topic: str) -> str:
        """The base topic, as image_transport takes it: the node appends /compressed itself."""
        return topic[: -len("/compressed")] if topic.endswith("/compressed") else topic

    # the single camera's depth topics (used with depth:=true; remapping them costs nothing otherwise)
    remappings = [("image", base(image)), ("depth/image", depth_image), ("depth/camera_info", depth_camera_info)]
    if cameras:
        names, remappings = [], []
        for spec in parse_classes(cameras):
            name, sep, topic = (p.strip() for p in spec.partition("="))
            names.append(name)
            if sep and topic:
                remappings.append((f"{name}/image", base(topic)))
        from dart_ros.ros.camera import check_camera_names

        try:
            check_camera_names(names)
        except ValueError as e:
            raise ValueError(f"cameras:={cameras}: {e}") from None
        overrides["cameras"] = names
    if depth:  # with several cameras: <name>/depth/image and <name>/depth/camera_info (docs/node.md)
        overrides["depth_3d"] = True
    params: List[object] = [preset_file(backbone, directory)]
    if params_file:
        params.append(os.path.expanduser(params_file))
    if overrides:
        params.append(overrides)
    executable = "detector_node"
    if lifecycle:
        executable = "detector_lifecycle_node"
        params.append({"autostart": autostart})
    nodes = [NodeLaunch("dart_ros", executable, node_name, namespace, params, remappings)]
    if use_rviz:
        first = overrides["cameras"][0] if cameras else ""
        rviz = rviz_config(os.path.join(directory or config_dir(), "dart.rviz"), namespace, node_name, first)
        rviz_params: List[object] = [{"use_sim_time": True}] if use_sim_time else []
        nodes.append(NodeLaunch("rviz2", "rviz2", "rviz2", namespace, rviz_params, [], ["-d", rviz]))
    return nodes
