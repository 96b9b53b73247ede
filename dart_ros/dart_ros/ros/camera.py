"""One camera served by the detector node: its topic names and its own state (newest frame,
publishers, statistics, tracker, depth buffers). The node holds one per camera; no tensor logic."""

from __future__ import annotations

import dataclasses
import re
from typing import List, Optional, Sequence

from dart_ros.depth3d import StampedBuffer
from dart_ros.ros.diagnostics import NodeStats

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class CameraTopics:
    """Topic names of one camera, relative to the node (inputs) or private (outputs).

    The single camera of a node without ``cameras`` keeps the plain names (``image``,
    ``~/detections`` …); a named camera ``front`` gets ``front/image``, ``~/front/detections`` …
    """

    name: str
    image: str
    depth: str
    camera_info: str
    detections: str
    image_annotated: str
    detections_3d: str
    markers_3d: str


def camera_topics(name: str = "") -> CameraTopics:
    prefix = f"{name}/" if name else ""
    return CameraTopics(
        name=name,
        image=f"{prefix}image",
        depth=f"{prefix}depth/image",
        camera_info=f"{prefix}depth/camera_info",
        detections=f"~/{prefix}detections",
        image_annotated=f"~/{prefix}image_annotated",
        detections_3d=f"~/{prefix}detections_3d",
        markers_3d=f"~/{prefix}markers_3d",
    )


def check_camera_names(names: Sequence[str]) -> None:
    """Raise ValueError unless every name is a ROS name token (a letter, then letters, digits,
    underscores) and no name repeats."""
    for n in names:
        if not isinstance(n, str) or not _NAME.match(n):
            raise ValueError(f"camera name {n!r} must start with a letter and hold only letters, digits and '_'")
    if len(set(names)) != len(names):
        raise ValueError(f"camera names repeat: {list(names)}")


class CameraChannel:
    """The state of one camera: only its newest unprocessed frame is kept (``slot``)."""

    def __init__(self, topics: CameraTopics, input_topic: str, stats: NodeStats, depth_queue: int):
        self.topics = topics
        self.name = topics.name
        self.input_topic = input_topic
        self.stats = stats
        self.tracker = None  # dart_ros.tracking.Tracker when tracking is on
        self.slot = None  # (msg, receive time)
        self.sub = None
        self.depth_subs: List = []
        self.depth = StampedBuffer(depth_queue)
        self.camera_info = StampedBuffer(depth_queue)
        self.pub_detections = None
        self.pub_annotated = None
        self.pub_annotated_jpeg = None
        self.pub_detections_3d = None
        self.pub_markers = None
        self.last_annotated = 0.0
        self.received_since_check = 0
        self.input_warned = False

    @property
    def label(self) -> str:
        """How logs name this camera ("" for the only camera of a node without ``cameras``)."""
        return f"camera {self.name}: " if self.name else ""

    def take(self) -> Optional[tuple]:
        item, self.slot = self.slot, None
        return item
