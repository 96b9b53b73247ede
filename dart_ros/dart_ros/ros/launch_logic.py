"""What ``launch/detector.launch.py`` starts, as plain Python (testable without ``launch``).

``backbone:=<preset>`` selects ``config/<preset>.yaml``; launch arguments override single
parameters on top of it; ``image:=`` remaps the input topic.
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


def detector_launch(
    backbone: str = DEFAULT_BACKBONE,
    image: str = "/camera/image_raw",
    classes: str = "",
    namespace: str = "",
    node_name: str = "dart",
    sam3_checkpoint: str = "",
    backbone_checkpoint: str = "",
    device: str = "",
    compressed: bool = False,
    params_file: str = "",
    use_rviz: bool = False,
    lifecycle: bool = False,
    autostart: bool = True,
    directory: Optional[str] = None,
) -> List[NodeLaunch]:
    """The nodes of ``detector.launch.py`` for the given launch arguments."""
    overrides: Dict[str, object] = {}
    if classes:
        overrides["classes"] = parse_classes(classes)
    if sam3_checkpoint:
        overrides["sam3_checkpoint"] = os.path.expanduser(sam3_checkpoint)
    if backbone_checkpoint:
        overrides["backbone_checkpoint"] = os.path.expanduser(backbone_checkpoint)
    if device:
        overrides["device"] = device
    if compressed:
        overrides["input_transport"] = "compressed"
    params: List[object] = [preset_file(backbone, directory)]
    if params_file:
        params.append(os.path.expanduser(params_file))
    if overrides:
        params.append(overrides)
    topic = "image/compressed" if compressed else "image"
    source = image.rstrip("/") + "/compressed" if compressed and not image.endswith("/compressed") else image
    executable = "detector_node"
    if lifecycle:
        executable = "detector_lifecycle_node"
        params.append({"autostart": autostart})
    nodes = [NodeLaunch("dart_ros", executable, node_name, namespace, params, [(topic, source)])]
    if use_rviz:
        rviz = os.path.join(directory or config_dir(), "dart.rviz")
        nodes.append(NodeLaunch("rviz2", "rviz2", "rviz2", namespace, [], [], ["-d", rviz]))
    return nodes
