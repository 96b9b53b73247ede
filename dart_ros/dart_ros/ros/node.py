"""The dart detector node: wires ROS topics, parameters and services to a :class:`Detector`.

    python -m dart_ros.ros.node --ros-args -p backbone:=repvit_m2_3 -p classes:="[person, forklift]" \
        -r image:=/camera/image_raw

Subscribes ``image`` (sensor_msgs/Image) or ``<image>/compressed`` (image_transport's naming);
publishes ``~/detections`` (vision_msgs/Detection2DArray, input header copied exactly),
``~/label_info`` (latched),
``~/image_annotated`` and ``~/image_annotated/compressed`` (JPEG; each only while subscribed)
and ``/diagnostics``. Services ``~/set_classes``
(dart_ros_interfaces/srv/SetClasses) and ``~/enable`` (std_srvs/SetBool).

With ``cameras: [front, rear]`` one model serves several cameras: ``front/image`` in,
``~/front/detections`` … out, one diagnostics status per camera. With ``depth_3d`` it also reads
``depth/image`` and ``depth/camera_info`` (per camera: ``front/depth/image`` …) and publishes
``~/detections_3d`` (vision_msgs/Detection3DArray) and ``~/markers_3d`` (RViz markers, while
subscribed).

Only the newest frame per camera is kept; inference runs on a worker thread, never on the executor.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import threading
import time
import traceback
from typing import Callable, List, Optional

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from dart_ros import image_decode
from dart_ros.config import parse_name_groups
from dart_ros.ros import conversions
from dart_ros.ros.camera import CameraChannel, camera_topics
from dart_ros.ros.diagnostics import NodeStats, diagnostic_array, diagnostic_status
from dart_ros.ros.params import declare_parameters, split_changes
from dart_ros.types import BadImageError, ImageFormatError, InvalidClassesError, one_line_error

DEFAULT_NODE_NAME = "dart"


class DetectorWiring:
    """Everything the node does, in steps a plain node runs at once and a lifecycle node runs on
    transitions: ``_setup`` (parameters), ``_load`` (model, outputs, services), ``_start`` (input
    subscriptions and worker), ``_stop_input`` and ``_unload``. Contains no tensor logic."""

    def _setup(self) -> None:
        _forward_python_logging(self.get_logger())
        self._det_cfg, self.cfg = declare_parameters(self)
        # Node-wide statistics; with one camera they are that camera's, with several the batches'.
        self.stats = NodeStats()
        self._logged_once = set()
        self._internal_param_update = False
        self.detector = None
        self._worker = None
        self._owned = []  # publishers, services and timers made by _load, destroyed by _unload
        self._cond = threading.Condition()
        self._stop = False
        self._batch_sizes = collections.deque(maxlen=200)
        self.cameras: List[CameraChannel] = []
        for name in self.cfg.cameras or [""]:
            topics = camera_topics(name)
            # As image_transport names it: the base topic is resolved (namespace, remapping), then
            # the transport's suffix appended, so ``-r image:=/cam/color`` gives /cam/color/compressed.
            topic = self.resolve_topic_name(topics.image)
            if self.cfg.input_transport == "compressed":
                topic = topic.rstrip("/") + "/compressed"
            stats = self.stats if not self.cfg.cameras else NodeStats()
            self.cameras.append(CameraChannel(topics, topic, stats, self.cfg.depth_queue_size))
        # Callback groups: which callbacks may overlap under a multi-threaded executor (a host
        # application's); the node's own main spins one thread (see spin_node).
        self._image_group = MutuallyExclusiveCallbackGroup()
        self._depth_group = MutuallyExclusiveCallbackGroup()
        self._service_group = MutuallyExclusiveCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self.add_on_set_parameters_callback(self._on_parameters)

    @property
    def _pipelined(self) -> bool:
        """Two-stream pipelining serves one camera; several cameras are batched instead."""
        return self.cfg.pipelining and len(self.cameras) == 1

    def _load(self) -> None:
        from dart_ros.detector import Detector

        log = self.get_logger()
        det_cfg = dataclasses.replace(self._det_cfg, classes=[])
        log.info(f"loading backbone {det_cfg.backbone!r} on {det_cfg.device} …")
        self.detector = Detector(det_cfg)
        for cam in self.cameras:
            cam.tracker = self._make_tracker()
        if self.cfg.tracking != "off":
            log.info(f"tracking: {self.cfg.tracking}, IDs in Detection2D.id")
        info = self.detector.describe()
        log.info("model ready: " + ", ".join(f"{k}={v}" for k, v in info.items()))
        # graphs and compiles now, not on the first frames (with several cameras: every batch size)
        took = self.detector.warm_up(batch_sizes=range(2, len(self.cameras) + 1))
        if took >= 0.05:  # the eager runtime has nothing to warm up
            log.info(f"warmed up in {took:.1f} s (CUDA graphs captured, kernels compiled)")
        if self.detector.random_weights:
            log.warning("NO sam3_checkpoint GIVEN: the model has RANDOM weights; detections are meaningless")
        if self.cfg.pipelining and len(self.cameras) > 1:
            log.info(f"pipelining serves one camera; the {len(self.cameras)} cameras' frames are batched instead")

        latched = QoSProfile(
            depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE
        )
        from dart_ros_interfaces.srv import SetClasses
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CompressedImage, Image
        from std_srvs.srv import SetBool
        from vision_msgs.msg import Detection2DArray, LabelInfo

        for cam in self.cameras:
            t = cam.topics
            cam.pub_detections = self.create_publisher(Detection2DArray, t.detections, 10)
            cam.pub_annotated = self.create_publisher(Image, t.image_annotated, 2)
            # image_transport's compressed variant of the same topic: JPEG, for viewing over Wi-Fi
            cam.pub_annotated_jpeg = self.create_publisher(
                CompressedImage, self.resolve_topic_name(t.image_annotated) + "/compressed", 2
            )
            self._owned += [cam.pub_detections, cam.pub_annotated, cam.pub_annotated_jpeg]
            if self.cfg.depth_3d:
                from vision_msgs.msg import Detection3DArray
                from visualization_msgs.msg import MarkerArray

                cam.pub_detections_3d = self.create_publisher(Detection3DArray, t.detections_3d, 10)
                cam.pub_markers = self.create_publisher(MarkerArray, t.markers_3d, 2)
                self._owned += [cam.pub_detections_3d, cam.pub_markers]
        self.pub_label_info = self.create_publisher(LabelInfo, "~/label_info", latched)
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._owned += [
            self.pub_label_info,
            self.pub_diagnostics,
            self.create_service(SetClasses, "~/set_classes", self._on_set_classes, callback_group=self._service_group),
            self.create_service(SetBool, "~/enable", self._on_enable, callback_group=self._service_group),
            self.create_timer(
                self.cfg.diagnostics_period_s, self._publish_diagnostics, callback_group=self._timer_group
            ),
            self.create_timer(self.cfg.no_input_warn_s, self._check_input, callback_group=self._timer_group),
        ]
        initial_classes = list(self._det_cfg.classes)
        if initial_classes:
            try:
                self._apply_classes(initial_classes, self._det_cfg.class_thresholds)
            except (InvalidClassesError, ValueError) as e:
                self._problem("error", f"initial classes rejected: {e}", key="initial_classes")
        else:
            self._publish_label_info()
            log.warning("no classes set: call the set_classes service or set the 'classes' parameter")

    def _make_tracker(self):
        if self.cfg.tracking == "off":
            return None
        from dart_ros.tracking import Tracker, TrackerConfig

        return Tracker(
            TrackerConfig(
                high_threshold=self.cfg.track_high_threshold,
                low_threshold=self.cfg.track_low_threshold,
                track_buffer=self.cfg.track_buffer_frames,
                per_class=self.cfg.tracking == "per_class",
            )
        )

    def _start(self) -> None:
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        qos = QoSProfile(
            depth=self.cfg.qos_depth,
            reliability=ReliabilityPolicy.BEST_EFFORT
            if self.cfg.qos_reliability == "best_effort"
            else ReliabilityPolicy.RELIABLE,
        )
        # Best effort hears reliable and best-effort publishers alike; a few messages of slack so
        # that the depth image of a frame is still there when its detections are ready.
        depth_qos = QoSProfile(depth=self.cfg.depth_queue_size, reliability=ReliabilityPolicy.BEST_EFFORT)
        msg_type = CompressedImage if self.cfg.input_transport == "compressed" else Image
        for cam in self.cameras:
            cam.sub = self.create_subscription(
                msg_type, cam.input_topic, functools.partial(self._on_image, cam), qos, callback_group=self._image_group
            )
            if self.cfg.depth_3d:
                cam.depth_subs = [
                    self.create_subscription(
                        Image, cam.topics.depth, functools.partial(_stamped, cam.depth), depth_qos,
                        callback_group=self._depth_group,
                    ),
                    self.create_subscription(
                        CameraInfo, cam.topics.camera_info, functools.partial(_stamped, cam.camera_info), depth_qos,
                        callback_group=self._depth_group,
                    ),
                ]  # fmt: skip
        with self._cond:
            self._stop = False
        self._worker = threading.Thread(target=self._work, name="dart_inference", daemon=True)
        self._worker.start()
        for cam in self.cameras:
            depth = (
                f"; depth from {self.resolve_topic_name(cam.topics.depth)} and "
                f"{self.resolve_topic_name(cam.topics.camera_info)}"
                if self.cfg.depth_3d
                else ""
            )
            self.get_logger().info(
                f"{cam.label}listening on {cam.input_topic} ({self.cfg.qos_reliability}, depth {self.cfg.qos_depth})"
                + depth
            )

    def _stop_input(self) -> None:
        for cam in self.cameras:
            for sub in [cam.sub] + cam.depth_subs:
                if sub is not None:
                    self.destroy_subscription(sub)
            cam.sub, cam.depth_subs = None, []
        with self._cond:
            self._stop = True
            for cam in self.cameras:
                cam.slot = None
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            self._worker = None

    def _unload(self) -> None:
        for entity in self._owned:
            for destroy in (self.destroy_publisher, self.destroy_service, self.destroy_timer):
                try:
                    if destroy(entity):
                        break
                except (TypeError, AttributeError):
                    continue
        self._owned = []
        if self.detector is not None:
            self.detector.close()
            self.detector = None
        for cam in self.cameras:
            cam.tracker = None

    # ------------------------------------------------------------------ input

    def _on_image(self, cam: CameraChannel, msg) -> None:
        cam.received_since_check += 1
        with self._cond:
            replaced = cam.slot is not None
            cam.slot = (msg, time.monotonic())
            self._cond.notify()
        cam.stats.on_received(replaced_unprocessed=replaced)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not any(c.slot is not None for c in self.cameras) and not self._stop:
                    if self._pipelined:
                        break
                    self._cond.wait()
                if self._stop:
                    return
                # the newest frame of every camera that has one: a silent camera holds nobody up
                batch = [(cam, *cam.take()) for cam in self.cameras if cam.slot is not None]
            if not batch:
                # Pipelining and no newer frame waiting: finish the frame in flight now rather than
                # holding it back until the next one arrives.
                for dets in self._safe(self.detector.flush):
                    self._publish(dets)
                with self._cond:
                    if not any(c.slot is not None for c in self.cameras) and not self._stop:
                        self._cond.wait()
                continue
            if not self.cfg.enabled:
                for cam, _, _ in batch:
                    cam.stats.on_dropped()
                continue
            self._process(batch)

    def _safe(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as e:
            self._problem("error", f"inference failed: {e}", key=f"runtime:{type(e).__name__}:{str(e)[:60]}")
            return []

    def _decode(self, cam: CameraChannel, msg):
        try:
            if self.cfg.input_transport == "compressed":
                return image_decode.compressed_to_array(msg)
            return image_decode.image_to_array(msg)
        except BadImageError as e:
            key = f"{cam.name}:{e.key}"
            self._problem("warn", f"bad input on {cam.input_topic}: {e}", key=key, cam=cam, bad_input=True)
        return None

    def _process(self, batch) -> None:
        """Detect in the newest frame of each camera in ``batch`` (one batched backbone pass) and
        publish each camera's results."""
        frames = []  # (camera, header, receive time, pixels, layout)
        for cam, msg, t_recv in batch:
            decoded = self._decode(cam, msg)
            if decoded is not None:
                frames.append((cam, msg.header, t_recv, *decoded))
        if not frames:
            return
        if self._pipelined:
            results = self._run(lambda f: self.detector.submit(f[3], color=f[4], meta=f), frames[0])
        elif len(frames) == 1:
            results = self._run(lambda f: [self.detector.detect(f[3], color=f[4])], frames[0])
        else:
            try:
                results = self.detector.detect_batch([f[3] for f in frames], color=[f[4] for f in frames])
                for r, f in zip(results, frames, strict=True):
                    r.meta = f
            except ImageFormatError:  # one camera's image: the others still get their results
                results = [d for f in frames for d in self._run(lambda f: [self.detector.detect(f[3], color=f[4])], f)]
            except RuntimeError as e:
                self._problem("error", f"inference failed: {e}", key=f"runtime:{type(e).__name__}:{str(e)[:60]}")
                return
        if len(self.cameras) > 1 and results:
            self._batch_sizes.append(len(results))
            self.stats.on_processed(results[0].timings_ms, (time.monotonic() - min(f[2] for f in frames)) * 1e3)
        for dets in results:
            self._publish(dets)

    def _run(self, step, frame) -> list:
        """``step(frame)`` -> results with ``meta`` = the frame; a bad image or a failure is reported
        against its camera and gives none."""
        cam = frame[0]
        try:
            results = step(frame)
        except ImageFormatError as e:
            key = f"{cam.name}:format"
            self._problem("warn", f"bad input on {cam.input_topic}: {e}", key=key, cam=cam, bad_input=True)
            return []
        except RuntimeError as e:
            self._problem("error", f"inference failed: {e}", key=f"runtime:{type(e).__name__}:{str(e)[:60]}")
            return []
        if not self._pipelined:
            for r in results:
                r.meta = frame
        return results

    def _publish(self, dets) -> None:
        cam, header, t_recv, arr, layout = dets.meta
        ids = cam.tracker.update(dets.boxes, dets.scores, dets.labels) if cam.tracker is not None else None
        cam.pub_detections.publish(conversions.detections_to_msg(dets, header, ids))
        e2e_ms = (time.monotonic() - t_recv) * 1e3
        cam.stats.on_processed(dets.timings_ms, e2e_ms)
        if cam.pub_detections_3d is not None:
            self._publish_3d(cam, dets, header, ids)
        self._maybe_annotate(cam, arr, layout, dets, header, ids)

    def _publish_3d(self, cam: CameraChannel, dets, header, track_ids) -> None:
        """3D boxes from the depth image and camera_info nearest in time to the frame (none when
        nothing lies within depth_slop_s: 3D from another moment would be wrong)."""
        from std_msgs.msg import Header

        from dart_ros.depth3d import Depth3DConfig, Intrinsics, box_to_3d, match_streams

        stamp = header.stamp.sec + header.stamp.nanosec * 1e-9
        got = match_streams(stamp, {"depth": cam.depth, "info": cam.camera_info}, self.cfg.depth_slop_s)
        cam.stats.on_3d(got is not None)
        if got is None:
            topics = f"{self.resolve_topic_name(cam.topics.depth)}, {self.resolve_topic_name(cam.topics.camera_info)}"
            self._once(
                f"no_depth:{cam.name}",
                lambda: self.get_logger().warning(
                    f"{cam.label}no depth image and camera_info within {self.cfg.depth_slop_s} s of a frame "
                    f"(on {topics}): no 3D detections for it; counted in /diagnostics as frames_without_depth "
                    "(logged once)"
                ),
            )
            return
        depth_msg, info = got["depth"], got["info"]
        try:
            depth = image_decode.depth_image_to_metres(depth_msg)
            k = Intrinsics.from_k(info.k)
            if (info.width, info.height) not in ((0, 0), (depth.shape[1], depth.shape[0])):
                raise ValueError(
                    f"camera_info is {info.width}x{info.height} but the depth image {depth.shape[1]}x{depth.shape[0]}"
                )
        except (BadImageError, ValueError) as e:
            key = getattr(e, "key", "depth")
            self._problem(
                "warn", f"bad depth input on {self.resolve_topic_name(cam.topics.depth)}: {e}",
                key=f"{cam.name}:depth:{key}", cam=cam, bad_input=True,
            )  # fmt: skip
            return
        # a depth image registered to the colour image, possibly at another resolution
        sy, sx = depth.shape[0] / dets.image_size[0], depth.shape[1] / dets.image_size[1]
        cfg3d = Depth3DConfig(min_depth_m=self.cfg.depth_min_m, max_depth_m=self.cfg.depth_max_m)
        boxes3d = [box_to_3d((x1 * sx, y1 * sy, x2 * sx, y2 * sy), depth, k, cfg3d) for x1, y1, x2, y2 in dets.boxes]
        out_header = Header(stamp=header.stamp, frame_id=depth_msg.header.frame_id or header.frame_id)
        msg = conversions.detections_3d_msg(dets, boxes3d, out_header, track_ids)
        cam.pub_detections_3d.publish(msg)
        if cam.pub_markers.get_subscription_count() > 0:
            class_ids = [c for c, b in zip(dets.class_ids.tolist(), boxes3d, strict=True) if b is not None]
            cam.pub_markers.publish(conversions.markers_3d_msg(msg, class_ids))

    def _maybe_annotate(self, cam: CameraChannel, arr, layout, dets, header, track_ids=None) -> None:
        raw = cam.pub_annotated.get_subscription_count() > 0
        jpeg = cam.pub_annotated_jpeg.get_subscription_count() > 0
        if not (raw or jpeg):
            return
        now = time.monotonic()
        rate = self.cfg.annotate_max_rate_hz
        if rate > 0 and now - cam.last_annotated < 1.0 / rate:
            return
        cam.last_annotated = now
        from dart_ros.visualize import draw_detections

        rgb = draw_detections(image_decode.to_rgb(arr, layout), dets, track_ids=track_ids)
        if raw:
            cam.pub_annotated.publish(conversions.array_to_image_msg(rgb, header))
        if jpeg:
            cam.pub_annotated_jpeg.publish(conversions.array_to_compressed_msg(rgb, header))
        cam.stats.on_annotated()

    def _check_input(self) -> None:
        for cam in self.cameras:
            self._check_camera_input(cam)

    def _check_camera_input(self, cam: CameraChannel) -> None:
        """Warn once when a publisher exists but nothing arrives, naming a QoS mismatch only where
        there is one (a reliable subscription never hears a best-effort publisher); otherwise the
        publisher may be paused, or a large image still in transit."""
        if cam.sub is None:
            return
        got, cam.received_since_check = cam.received_since_check, 0
        if got or cam.input_warned:
            return
        pubs = self.get_publishers_info_by_topic(cam.input_topic)
        if not pubs:
            self._once(
                f"no_publisher:{cam.name}",
                lambda: self.get_logger().info(f"{cam.label}waiting for a publisher on {cam.input_topic}"),
            )
            return
        desc = "; ".join(
            f"{p.node_namespace.rstrip('/')}/{p.node_name}: {p.qos_profile.reliability.name.lower()}, "
            f"{p.qos_profile.durability.name.lower()}"
            for p in pubs
        )
        mismatched = self.cfg.qos_reliability == "reliable" and any(
            p.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for p in pubs
        )
        cause = (
            "QoS mismatch: a reliable subscription never receives from a best-effort publisher"
            if mismatched
            else "QoS compatible: the publisher may be paused, or a large image still in transit"
        )
        cam.input_warned = True
        self._problem(
            "warn",
            f"{len(pubs)} publisher(s) on {cam.input_topic} but no image for {self.cfg.no_input_warn_s:.0f} s; "
            f"{cause} (publishers: {desc}; this node subscribes {self.cfg.qos_reliability}, "
            f"depth {self.cfg.qos_depth})",
            key=f"no_input:{cam.name}",
            cam=cam,
        )

    # ------------------------------------------------------------------ vocabulary and settings

    def _apply_classes(self, names, thresholds=(), update_parameter: bool = True) -> list:
        """Set the vocabulary and its per-class thresholds (raises on rejection: the previous ones
        stay) and announce it."""
        active = self.detector.set_classes(names, list(thresholds))
        self._det_cfg.classes = self.detector.class_specs
        self._det_cfg.class_thresholds = self.detector.class_thresholds
        self._apply_nms_groups(self.cfg.nms_groups)
        self._publish_label_info()
        if update_parameter:
            self._set_parameter_quietly("classes", self.detector.class_specs)
            self._set_parameter_quietly("class_thresholds", [float(t) for t in self.detector.class_thresholds])
        limits = self.detector.class_thresholds
        shown = ", ".join(f"{c} (> {t:g})" for c, t in zip(active, limits, strict=True)) if limits else None
        shown = shown or ", ".join(active)
        self.get_logger().info(f"vocabulary v{self.detector.vocabulary_version}: {shown}")
        return active

    def _apply_nms_groups(self, text: str) -> None:
        index = {n: i for i, n in enumerate(self.detector.classes)}
        groups = tuple(tuple(index[n] for n in g if n in index) for g in parse_name_groups(text))
        self.detector.update(nms_groups=tuple(g for g in groups if g))

    def _publish_label_info(self) -> None:
        from std_msgs.msg import Header

        header = Header()
        header.stamp = self.get_clock().now().to_msg()
        self.pub_label_info.publish(
            conversions.label_info_msg(self.detector.classes, self.detector.config.confidence_threshold, header)
        )

    def _set_parameter_quietly(self, name, value) -> None:
        from rclpy.parameter import Parameter

        self._internal_param_update = True
        try:
            if name == "class_thresholds":  # an empty list has no type of its own
                param = Parameter(name, Parameter.Type.DOUBLE_ARRAY, [float(v) for v in value])
            else:
                param = Parameter(name, value=value)
            self.set_parameters([param])
        finally:
            self._internal_param_update = False

    def _on_set_classes(self, request, response):
        try:
            response.classes = self._apply_classes(list(request.classes), list(request.thresholds))
            response.success = True
            response.message = (
                f"{len(response.classes)} classes active (vocabulary v{self.detector.vocabulary_version})"
            )
        except (InvalidClassesError, ValueError) as e:
            response.success, response.message = False, f"rejected: {e}"
            response.classes = self.detector.classes
            self.get_logger().warning(f"set_classes {response.message}")
        except RuntimeError as e:
            response.success, response.message = False, f"failed: {e}"
            response.classes = self.detector.classes
            self._problem("error", f"set_classes failed: {e}", key="set_classes_runtime")
        return response

    def _on_enable(self, request, response):
        self._set_parameter_quietly("enabled", bool(request.data))
        self.cfg.enabled = bool(request.data)
        response.success = True
        response.message = "inference enabled" if request.data else "inference paused"
        self.get_logger().info(response.message)
        return response

    def _on_parameters(self, params):
        from rcl_interfaces.msg import SetParametersResult

        if self._internal_param_update:
            return SetParametersResult(successful=True)
        try:
            det, node, vocab = split_changes(params)
            candidate_det = dataclasses.replace(self._det_cfg, **det).validate()
            candidate = dataclasses.replace(self.cfg, **node).validate()
            if self.detector is None:  # lifecycle node, not configured: remembered for configure
                if "classes" in vocab:
                    if not vocab["classes"] or not all(c.strip() for c in vocab["classes"]):
                        raise ValueError("classes must be a non-empty list of non-empty names")
                    candidate_det.classes = list(vocab["classes"])
                if "class_thresholds" in vocab:
                    candidate_det.class_thresholds = vocab["class_thresholds"]
                self._det_cfg, self.cfg = candidate_det.validate(), candidate
                return SetParametersResult(successful=True)
            if vocab:
                names = vocab.get("classes", self.detector.class_specs)
                thresholds = vocab.get("class_thresholds", self.detector.class_thresholds)
                if thresholds and len(thresholds) != len(names):
                    raise ValueError(
                        f"{len(names)} classes but {len(thresholds)} class_thresholds: set both together "
                        "(or class_thresholds to [] first)"
                    )
                self._apply_classes(names, thresholds, update_parameter=False)
            if det:
                self.detector.update(**det)
            self._det_cfg = dataclasses.replace(
                candidate_det, classes=self.detector.class_specs, class_thresholds=self.detector.class_thresholds
            )
            self.cfg = candidate
            if "nms_groups" in node:
                self._apply_nms_groups(candidate.nms_groups)
            if "confidence_threshold" in det:
                self._publish_label_info()
        except (InvalidClassesError, ValueError) as e:
            return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ reporting

    def _once(self, key: str, fn) -> None:
        if key not in self._logged_once:
            self._logged_once.add(key)
            fn()

    def _problem(
        self, level: str, message: str, key: str, bad_input: bool = False, cam: Optional[CameraChannel] = None
    ) -> None:
        """Count a problem for /diagnostics (against its camera, if it has one) and log it once per kind."""
        (cam.stats if cam is not None else self.stats).on_problem(level, message, bad_input)
        log = self.get_logger()
        text = (cam.label if cam is not None else "") + message
        self._once(key, lambda: (log.error if level == "error" else log.warning)(text + " (logged once)"))

    def _publish_diagnostics(self) -> None:
        info = dict(self.detector.describe())
        info.update(
            backend="torch",
            enabled=str(self.cfg.enabled),
            classes=",".join(self.detector.classes),
            num_classes=str(len(self.detector.classes)),
            vocabulary_version=str(self.detector.vocabulary_version),
            tracking=self.cfg.tracking,
            depth_3d=str(self.cfg.depth_3d),
        )
        window = max(5.0, 3 * self.cfg.diagnostics_period_s)
        name = self.get_name()

        def camera_info(cam: CameraChannel) -> dict:
            out = {"input_topic": cam.input_topic}
            if cam.tracker is not None:
                out["live_tracks"] = str(cam.tracker.live_tracks)
            if self.cfg.depth_3d:
                out["depth_topic"] = self.resolve_topic_name(cam.topics.depth)
            return out

        if len(self.cameras) == 1:
            info.update(camera_info(self.cameras[0]))
            statuses = [diagnostic_status(f"{name}: detector", info["device"], self.stats.snapshot(), info, window)]
        else:
            sizes = list(self._batch_sizes)
            info.update(
                cameras=",".join(c.name for c in self.cameras),
                mean_batch_size=f"{sum(sizes) / len(sizes):.2f}" if sizes else "nan",
            )
            # the node-wide status: rates and latencies of batches, problems not tied to a camera
            statuses = [diagnostic_status(f"{name}: detector", info["device"], self.stats.snapshot(), info, window)]
            shared = {k: info[k] for k in ("weights", "enabled", "classes")}
            for cam in self.cameras:
                statuses.append(
                    diagnostic_status(
                        f"{name}: camera {cam.name}", info["device"], cam.stats.snapshot(),
                        {**shared, **camera_info(cam)}, window,
                    )
                )  # fmt: skip
        self.pub_diagnostics.publish(diagnostic_array(self.get_clock().now().to_msg(), statuses))

    def shutdown(self) -> None:
        self._stop_input()


class DetectorNode(DetectorWiring, Node):
    """The detector node: loads the model and starts listening at construction."""

    def __init__(self, node_name: str = DEFAULT_NODE_NAME, **kwargs):
        Node.__init__(self, node_name, **kwargs)
        self._setup()
        self._load()
        self._start()


def _stamped(buffer, msg) -> None:
    """Keep a depth image or camera_info by its stamp for matching to frames."""
    buffer.add(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9, msg)


class _RosLogHandler(logging.Handler):
    """Sends the library's Python logging (model loading, caches …) to the node's ROS logger."""

    def __init__(self, ros_logger):
        super().__init__(logging.INFO)
        self.ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        msg = self.format(record)
        if record.levelno >= logging.ERROR:
            self.ros_logger.error(msg)
        elif record.levelno >= logging.WARNING:
            self.ros_logger.warning(msg)
        else:
            self.ros_logger.info(msg)


def _forward_python_logging(ros_logger) -> None:
    lib = logging.getLogger("dart_ros")
    lib.setLevel(logging.INFO)
    lib.addHandler(_RosLogHandler(ros_logger))
    lib.propagate = False


def spin_node(factory: Callable[[], DetectorWiring], args=None, on_start: Callable = lambda node: None) -> None:
    """The portable rclpy main (Humble to Kilted): init, build, spin one executor thread, shut down.

    rclpy's own signal handlers would shut the context down the moment Ctrl-C arrives, while the
    inference thread may still be publishing ("publisher's context is invalid"). Here SIGINT and
    SIGTERM end the spin instead; the worker is stopped first, then the context goes."""
    import signal
    import sys

    from rclpy.signals import SignalHandlerOptions

    from dart_ros.ros.cli_help import exit_with_help_if_asked
    from dart_ros.ros.params import parameter_help

    exit_with_help_if_asked(sys.modules[factory.__module__].__doc__, parameter_help(), args)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C: a clean shutdown
    node: Optional[DetectorWiring] = None
    executor = None
    failed = False
    try:
        try:
            node = factory()
        except (KeyboardInterrupt, ExternalShutdownException):
            raise
        except Exception as e:  # a bad checkpoint, device or parameter: one line, the details at debug level
            failed = True
            logger = rclpy.logging.get_logger(DEFAULT_NODE_NAME)
            logger.error(f"cannot start: {startup_error(e)}")
            logger.debug(traceback.format_exc())
        if node is not None:
            on_start(node)
            # One executor thread beside the inference thread. rclpy's MultiThreadedExecutor, its
            # threads contending for the GIL with inference, held a GPU node at 1080p to a fraction
            # of the rate it sustains with one (docs/benchmarks.md, "The node over DDS").
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if node is not None:
            node.shutdown()  # the worker stops before anything it publishes on is destroyed
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if failed:
        raise SystemExit(1)


def startup_error(e: BaseException) -> str:
    """One line for a start-up failure (see types.one_line_error)."""
    return one_line_error(e)


def main(args=None) -> None:
    spin_node(DetectorNode, args)


if __name__ == "__main__":
    main()
