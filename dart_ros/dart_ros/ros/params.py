"""ROS parameters of the detector node, mapped 1:1 onto :class:`DetectorConfig` and :class:`NodeConfig`.

Every field of both dataclasses is a parameter with the same name. Fields that need a model rebuild
are read-only; the others can be changed with ``ros2 param set`` and are validated first.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

from dart_ros.config import FIELD_HELP, RUNTIME_FIELDS, DetectorConfig

INPUT_TRANSPORTS = ("raw", "compressed")
RELIABILITIES = ("best_effort", "reliable")


@dataclasses.dataclass
class NodeConfig:
    """What the node adds around the Detector.

    Attributes:
        input_transport: ``raw`` (sensor_msgs/Image on ``image``) or ``compressed``
            (sensor_msgs/CompressedImage on ``<image>/compressed``: the resolved ``image`` topic plus
            ``/compressed``, as image_transport names it).
        qos_reliability / qos_depth: input QoS. Best effort (default) receives from reliable and
            best-effort publishers; depth 1 keeps only the newest frame.
        enabled: run inference (toggle with the ``~/enable`` service).
        annotate_max_rate_hz: cap on ``~/image_annotated`` (0 = every processed frame).
        diagnostics_period_s: period of ``/diagnostics`` reports.
        no_input_warn_s: warn when a publisher exists but no image arrived for this long.
        pipelining: overlap consecutive frames on two CUDA streams (Detector streaming API).
        nms_groups: class-name groups NMS-ed together in ``grouped`` mode, e.g. ``car,truck;person,rider``.
        tracking: ``off``, ``per_class`` or ``agnostic``: stable track IDs in ``Detection2D.id``
            (:mod:`dart_ros.tracking`); track_buffer_frames: frames a lost track is kept;
            track_high_threshold / track_low_threshold: ByteTrack's two association passes.
        cameras: names of several cameras served by this one model (empty: one camera on
            ``image``). Camera ``front`` reads ``front/image`` and publishes ``~/front/detections``
            …; frames that wait together go through one batched backbone pass.
        depth_3d: also publish ``~/detections_3d`` (vision_msgs/Detection3DArray in the camera's
            optical frame) from a registered depth image (``depth/image``: 16UC1 mm or 32FC1 m)
            and its ``depth/camera_info``, matched to each frame by stamp within depth_slop_s;
            depth_queue_size: depth and camera_info messages kept per camera for that matching;
            depth_min_m / depth_max_m: depth outside this range counts as no measurement.
    """

    input_transport: str = "raw"
    qos_reliability: str = "best_effort"
    qos_depth: int = 1
    enabled: bool = True
    annotate_max_rate_hz: float = 0.0
    diagnostics_period_s: float = 1.0
    no_input_warn_s: float = 5.0
    pipelining: bool = False
    nms_groups: str = ""
    tracking: str = "off"
    track_buffer_frames: int = 30
    track_high_threshold: float = 0.5
    track_low_threshold: float = 0.1
    cameras: List[str] = dataclasses.field(default_factory=list)
    depth_3d: bool = False
    depth_slop_s: float = 0.05
    depth_queue_size: int = 10
    depth_min_m: float = 0.1
    depth_max_m: float = 20.0

    def validate(self) -> "NodeConfig":
        if self.input_transport not in INPUT_TRANSPORTS:
            raise ValueError(f"input_transport must be one of {INPUT_TRANSPORTS}, got {self.input_transport!r}")
        if self.qos_reliability not in RELIABILITIES:
            raise ValueError(f"qos_reliability must be one of {RELIABILITIES}, got {self.qos_reliability!r}")
        if self.qos_depth < 1:
            raise ValueError(f"qos_depth must be >= 1, got {self.qos_depth}")
        from dart_ros.tracking import TRACKING_MODES

        if self.tracking not in TRACKING_MODES:
            raise ValueError(f"tracking must be one of {TRACKING_MODES}, got {self.tracking!r}")
        if self.track_buffer_frames < 1:
            raise ValueError(f"track_buffer_frames must be >= 1, got {self.track_buffer_frames}")
        if not 0 <= self.track_low_threshold <= self.track_high_threshold <= 1:
            raise ValueError("track_low_threshold <= track_high_threshold, both in [0, 1], required")
        from dart_ros.ros.camera import check_camera_names

        check_camera_names(self.cameras)
        if self.depth_slop_s < 0 or self.depth_queue_size < 1:
            raise ValueError("depth_slop_s must be >= 0 and depth_queue_size >= 1")
        if not 0 < self.depth_min_m < self.depth_max_m:
            raise ValueError(f"0 < depth_min_m < depth_max_m required, got {self.depth_min_m}, {self.depth_max_m}")
        if self.annotate_max_rate_hz < 0 or self.diagnostics_period_s <= 0 or self.no_input_warn_s <= 0:
            raise ValueError("annotate_max_rate_hz must be >= 0; diagnostics_period_s and no_input_warn_s > 0")
        return self


NODE_FIELD_HELP = {
    "input_transport": "raw (sensor_msgs/Image on image) or compressed (<image>/compressed)",
    "qos_reliability": "input QoS: best_effort (receives from any publisher) or reliable",
    "qos_depth": "input queue depth (1: only the newest frame)",
    "enabled": "run inference (also the ~/enable service)",
    "annotate_max_rate_hz": "cap on ~/image_annotated in Hz (0: every processed frame)",
    "diagnostics_period_s": "period of /diagnostics reports in seconds",
    "no_input_warn_s": "warn when a publisher exists but no image arrived for this many seconds",
    "pipelining": "overlap consecutive frames on two CUDA streams (one frame more latency)",
    "nms_groups": "grouped NMS: 'car,truck;person,rider'",
    "tracking": "track IDs in Detection2D.id: off, per_class (a track keeps its class) or agnostic",
    "track_buffer_frames": "frames a track that is not seen is kept before its ID is retired",
    "track_high_threshold": "tracking: detections scoring at least this are matched first and start tracks (at +0.1)",
    "track_low_threshold": "tracking: weaker detections down to this keep existing tracks alive (occlusions)",
    "cameras": "names of several cameras through one model, e.g. [front, rear]: camera front reads front/image "
    "and publishes ~/front/detections (empty: one camera on image)",
    "depth_3d": "publish ~/detections_3d (Detection3DArray) from depth/image (16UC1 mm or 32FC1 m) and "
    "depth/camera_info, registered to the color image",
    "depth_slop_s": "3D: largest stamp difference in seconds between a frame and its depth image and camera_info",
    "depth_queue_size": "3D: depth and camera_info messages kept per camera for matching by stamp",
    "depth_min_m": "3D: nearer depth counts as no measurement (metres)",
    "depth_max_m": "3D: farther depth counts as no measurement (metres)",
}


def parameter_help() -> List[Tuple[str, Any, str]]:
    """(name, default, meaning) of every node parameter, for ``--help``."""
    out = []
    for owner, cfg, f in parameter_fields():
        text = (FIELD_HELP if owner == "detector" else NODE_FIELD_HELP).get(f.name, "")
        out.append((f.name, getattr(cfg, f.name), text))
    return out


NODE_RUNTIME_FIELDS = (
    "enabled",
    "annotate_max_rate_hz",
    "nms_groups",
    "no_input_warn_s",
    "depth_slop_s",
    "depth_min_m",
    "depth_max_m",
)
# DetectorConfig fields that are not ROS parameters as such (the node maps them itself).
DETECTOR_EXCLUDED = ("nms_groups",)


def _ros_value(field: dataclasses.Field, value):
    """Dataclass value -> parameter value (or a Parameter.Type for an empty string array)."""
    from rclpy.parameter import Parameter

    if field.name == "skip_blocks":
        return "" if value is None else ",".join(str(i) for i in value)
    if isinstance(value, list):
        if value:
            return [float(v) for v in value] if field.name == "class_thresholds" else list(value)
        return Parameter.Type.DOUBLE_ARRAY if field.name == "class_thresholds" else Parameter.Type.STRING_ARRAY
    return value


def _config_value(name: str, value, default):
    """Parameter value -> dataclass value."""
    if name == "skip_blocks":
        text = (value or "").strip()
        if not text:
            return None
        try:
            return tuple(int(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"skip_blocks must be comma-separated integers, got {value!r}") from None
    if isinstance(default, list):
        if name == "class_thresholds":
            return [float(v) for v in (list(value) if value is not None else [])]
        return list(value or [])
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    return value


def parameter_fields() -> List[Tuple[str, Any, dataclasses.Field]]:
    """(owner, default instance, field) for every parameter."""
    out = []
    for owner, cfg in (("detector", DetectorConfig()), ("node", NodeConfig())):
        for f in dataclasses.fields(cfg):
            if owner == "detector" and f.name in DETECTOR_EXCLUDED:
                continue
            out.append((owner, cfg, f))
    return out


def configs_from_values(values: Dict[str, Any]) -> Tuple[DetectorConfig, NodeConfig]:
    """Parameter values by name (a parameter file's, ``-p`` overrides) -> the configs the node would
    run with (validated); names that are no parameter raise ValueError. Needs no ROS."""
    known = {f.name for _, _, f in parameter_fields()}
    unknown = sorted(set(values) - known - {"use_sim_time"})
    if unknown:
        raise ValueError(f"not parameters of the detector node: {', '.join(unknown)}")
    det_kwargs, node_kwargs = {}, {}
    for owner, cfg, f in parameter_fields():
        if f.name in values:
            value = _config_value(f.name, values[f.name], getattr(cfg, f.name))
            (det_kwargs if owner == "detector" else node_kwargs)[f.name] = value
    return DetectorConfig(**det_kwargs).validate(), NodeConfig(**node_kwargs).validate()


def read_params_file(path: str, node_name: str = "dart") -> Dict[str, Any]:
    """The ``ros__parameters`` of a ROS 2 parameter file for this node: the ``/**`` wildcard's, then
    the node's own (``<node_name>`` or ``/<node_name>``) on top, as ``--params-file`` applies them."""
    import yaml

    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    values: Dict[str, Any] = {}
    for key in ("/**", node_name, "/" + node_name):
        section = doc.get(key) or {}
        values.update(section.get("ros__parameters") or {})
    return values


VOCABULARY_FIELDS = ("classes", "class_thresholds")


def is_dynamic(name: str) -> bool:
    return name in VOCABULARY_FIELDS or name in RUNTIME_FIELDS or name in NODE_RUNTIME_FIELDS


def declare_parameters(node, overrides: Optional[Dict[str, Any]] = None) -> Tuple[DetectorConfig, NodeConfig]:
    """Declare every parameter on ``node`` and return the configs they describe (validated)."""
    from rcl_interfaces.msg import ParameterDescriptor

    overrides = overrides or {}
    det_kwargs, node_kwargs = {}, {}
    for owner, cfg, f in parameter_fields():
        default = overrides.get(f.name, getattr(cfg, f.name))
        desc = ParameterDescriptor(
            description=FIELD_HELP.get(f.name, f.name.replace("_", " ")),
            read_only=not is_dynamic(f.name),
        )
        p = node.declare_parameter(f.name, _ros_value(f, default), desc)
        value = _config_value(f.name, p.value, getattr(cfg, f.name))
        (det_kwargs if owner == "detector" else node_kwargs)[f.name] = value
    return DetectorConfig(**det_kwargs).validate(), NodeConfig(**node_kwargs).validate()


def split_changes(params) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, list]]:
    """rclpy Parameters -> (Detector run-time changes, node changes, vocabulary changes: ``classes``
    and/or ``class_thresholds``).

    Raises ValueError for unknown or read-only names and for values of the wrong type.
    """
    defaults_det, defaults_node = DetectorConfig(), NodeConfig()
    det, node, vocab = {}, {}, {}
    for p in params:
        if p.name == "classes":
            value = p.value
            if value is None or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError("classes must be a list of strings")
            vocab["classes"] = list(value)
        elif p.name == "class_thresholds":
            value = p.value if p.value is not None else []
            value = list(value) if not isinstance(value, (str, bytes)) and hasattr(value, "__iter__") else value
            if not isinstance(value, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
            ):
                raise ValueError("class_thresholds must be a list of numbers")
            vocab["class_thresholds"] = [float(v) for v in value]
        elif p.name in RUNTIME_FIELDS and p.name not in DETECTOR_EXCLUDED:
            det[p.name] = _typed(p.name, p.value, getattr(defaults_det, p.name))
        elif p.name in NODE_RUNTIME_FIELDS:
            node[p.name] = _typed(p.name, p.value, getattr(defaults_node, p.name))
        elif p.name in ("use_sim_time",):
            continue
        else:
            raise ValueError(f"parameter {p.name!r} cannot change at run time")
    return det, node, vocab


def _typed(name, value, default):
    value = _config_value(name, value, default)
    expected = type(default)
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(f"{name} must be a {expected.__name__}, got {value!r}")
    return value
