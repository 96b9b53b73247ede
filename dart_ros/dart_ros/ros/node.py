"""The dart detector node: wires ROS topics, parameters and services to a :class:`Detector`.

    python -m dart_ros.ros.node --ros-args -p backbone:=repvit_m2_3 -p classes:="[person, forklift]" \
        -r image:=/camera/image_raw

Subscribes ``image`` (sensor_msgs/Image) or ``<image>/compressed`` (image_transport's naming);
publishes ``~/detections`` (vision_msgs/Detection2DArray, input header copied exactly),
``~/label_info`` (latched),
``~/image_annotated`` and ``~/image_annotated/compressed`` (JPEG; each only while subscribed)
and ``/diagnostics``. Services ``~/set_classes``
(dart_ros_interfaces/srv/SetClasses) and ``~/enable`` (std_srvs/SetBool).

Only the newest frame is kept; inference runs on a worker thread, never on the executor.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import traceback
from typing import Callable, Optional

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from dart_ros import image_decode
from dart_ros.config import parse_name_groups
from dart_ros.ros import conversions
from dart_ros.ros.diagnostics import NodeStats, diagnostic_array
from dart_ros.ros.params import declare_parameters, split_changes
from dart_ros.types import BadImageError, ImageFormatError, InvalidClassesError, one_line_error

DEFAULT_NODE_NAME = "dart"


class DetectorWiring:
    """Everything the node does, in steps a plain node runs at once and a lifecycle node runs on
    transitions: ``_setup`` (parameters), ``_load`` (model, outputs, services), ``_start`` (input
    subscription and worker), ``_stop_input`` and ``_unload``. Contains no tensor logic."""

    def _setup(self) -> None:
        _forward_python_logging(self.get_logger())
        self._det_cfg, self.cfg = declare_parameters(self)
        self.stats = NodeStats()
        self._logged_once = set()
        self._internal_param_update = False
        self.detector = None
        self.tracker = None  # dart_ros.tracking.Tracker when tracking is on
        self.sub = None
        self._worker = None
        self._owned = []  # publishers, services and timers made by _load, destroyed by _unload
        self._slot = None  # (msg, receive time): only the newest frame is kept
        self._cond = threading.Condition()
        self._stop = False
        self._last_annotated = 0.0
        self._received_since_check = 0
        self._input_warned = False
        # As image_transport names it: the base topic ``image`` is resolved (namespace, remapping),
        # then the transport's suffix appended, so ``-r image:=/cam/color`` gives /cam/color/compressed.
        self.input_topic = self.resolve_topic_name("image")
        if self.cfg.input_transport == "compressed":
            self.input_topic = self.input_topic.rstrip("/") + "/compressed"
        # Callback groups: a slow vocabulary swap must not block image reception.
        self._image_group = MutuallyExclusiveCallbackGroup()
        self._service_group = MutuallyExclusiveCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self.add_on_set_parameters_callback(self._on_parameters)

    def _load(self) -> None:
        from dart_ros.detector import Detector

        log = self.get_logger()
        det_cfg = dataclasses.replace(self._det_cfg, classes=[])
        log.info(f"loading backbone {det_cfg.backbone!r} on {det_cfg.device} …")
        self.detector = Detector(det_cfg)
        self.tracker = None
        if self.cfg.tracking != "off":
            from dart_ros.tracking import Tracker, TrackerConfig

            per_class = self.cfg.tracking == "per_class"
            self.tracker = Tracker(
                TrackerConfig(
                    high_threshold=self.cfg.track_high_threshold,
                    low_threshold=self.cfg.track_low_threshold,
                    track_buffer=self.cfg.track_buffer_frames,
                    per_class=per_class,
                )
            )
            log.info(f"tracking: {self.cfg.tracking}, IDs in Detection2D.id")
        info = self.detector.describe()
        log.info("model ready: " + ", ".join(f"{k}={v}" for k, v in info.items()))
        took = self.detector.warm_up()  # graphs and compiles now, not on the first frames
        if took >= 0.05:  # the eager runtime has nothing to warm up
            log.info(f"warmed up in {took:.1f} s (CUDA graphs captured, kernels compiled)")
        if self.detector.random_weights:
            log.warning("NO sam3_checkpoint GIVEN: the model has RANDOM weights; detections are meaningless")

        latched = QoSProfile(
            depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE
        )
        from dart_ros_interfaces.srv import SetClasses
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CompressedImage, Image
        from std_srvs.srv import SetBool
        from vision_msgs.msg import Detection2DArray, LabelInfo

        self.pub_detections = self.create_publisher(Detection2DArray, "~/detections", 10)
        self.pub_label_info = self.create_publisher(LabelInfo, "~/label_info", latched)
        self.pub_annotated = self.create_publisher(Image, "~/image_annotated", 2)
        # image_transport's compressed variant of the same topic: JPEG, for viewing over Wi-Fi
        self.pub_annotated_jpeg = self.create_publisher(
            CompressedImage, self.resolve_topic_name("~/image_annotated") + "/compressed", 2
        )
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._owned = [
            self.pub_detections,
            self.pub_label_info,
            self.pub_annotated,
            self.pub_annotated_jpeg,
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

    def _start(self) -> None:
        from sensor_msgs.msg import CompressedImage, Image

        qos = QoSProfile(
            depth=self.cfg.qos_depth,
            reliability=ReliabilityPolicy.BEST_EFFORT
            if self.cfg.qos_reliability == "best_effort"
            else ReliabilityPolicy.RELIABLE,
        )
        msg_type = CompressedImage if self.cfg.input_transport == "compressed" else Image
        self.sub = self.create_subscription(
            msg_type, self.input_topic, self._on_image, qos, callback_group=self._image_group
        )
        with self._cond:
            self._stop = False
        self._worker = threading.Thread(target=self._work, name="dart_inference", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"listening on {self.input_topic} ({self.cfg.qos_reliability}, depth {self.cfg.qos_depth})"
        )

    def _stop_input(self) -> None:
        if self.sub is not None:
            self.destroy_subscription(self.sub)
            self.sub = None
        with self._cond:
            self._stop = True
            self._slot = None
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
        self.tracker = None

    # ------------------------------------------------------------------ input

    def _on_image(self, msg) -> None:
        self._received_since_check += 1
        with self._cond:
            replaced = self._slot is not None
            self._slot = (msg, time.monotonic())
            self._cond.notify()
        self.stats.on_received(replaced_unprocessed=replaced)

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._stop:
                    if self.cfg.pipelining:
                        break
                    self._cond.wait()
                if self._stop:
                    return
                item, self._slot = self._slot, None
            if item is None:
                # Pipelining and no newer frame waiting: finish the frame in flight now rather than
                # holding it back until the next one arrives.
                for dets in self._safe(self.detector.flush):
                    self._publish(dets)
                with self._cond:
                    if self._slot is None and not self._stop:
                        self._cond.wait()
                continue
            if not self.cfg.enabled:
                self.stats.on_dropped()
                continue
            self._process(*item)

    def _safe(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as e:
            self._problem("error", f"inference failed: {e}", key=f"runtime:{type(e).__name__}:{str(e)[:60]}")
            return []

    def _process(self, msg, t_recv: float) -> None:
        try:
            if self.cfg.input_transport == "compressed":
                arr, layout = image_decode.compressed_to_array(msg)
            else:
                arr, layout = image_decode.image_to_array(msg)
            meta = (msg.header, t_recv, arr, layout)
            if self.cfg.pipelining:
                results = self.detector.submit(arr, color=layout, meta=meta)
            else:
                dets = self.detector.detect(arr, color=layout)
                dets.meta = meta
                results = [dets]
        except BadImageError as e:
            self._problem("warn", f"bad input on {self.input_topic}: {e}", key=e.key, bad_input=True)
            return
        except ImageFormatError as e:
            self._problem("warn", f"bad input on {self.input_topic}: {e}", key="format", bad_input=True)
            return
        except RuntimeError as e:
            self._problem("error", f"inference failed: {e}", key=f"runtime:{type(e).__name__}:{str(e)[:60]}")
            return
        for dets in results:
            self._publish(dets)

    def _publish(self, dets) -> None:
        header, t_recv, arr, layout = dets.meta
        ids = self.tracker.update(dets.boxes, dets.scores, dets.labels) if self.tracker is not None else None
        self.pub_detections.publish(conversions.detections_to_msg(dets, header, ids))
        self.stats.on_processed(dets.timings_ms, (time.monotonic() - t_recv) * 1e3)
        self._maybe_annotate(arr, layout, dets, header, ids)

    def _maybe_annotate(self, arr, layout, dets, header, track_ids=None) -> None:
        raw = self.pub_annotated.get_subscription_count() > 0
        jpeg = self.pub_annotated_jpeg.get_subscription_count() > 0
        if not (raw or jpeg):
            return
        now = time.monotonic()
        rate = self.cfg.annotate_max_rate_hz
        if rate > 0 and now - self._last_annotated < 1.0 / rate:
            return
        self._last_annotated = now
        from dart_ros.visualize import draw_detections

        rgb = draw_detections(image_decode.to_rgb(arr, layout), dets, track_ids=track_ids)
        if raw:
            self.pub_annotated.publish(conversions.array_to_image_msg(rgb, header))
        if jpeg:
            self.pub_annotated_jpeg.publish(conversions.array_to_compressed_msg(rgb, header))
        self.stats.on_annotated()

    def _check_input(self) -> None:
        """Warn once when a publisher exists but nothing arrives, naming a QoS mismatch only where
        there is one (a reliable subscription never hears a best-effort publisher); otherwise the
        publisher may be paused, or a large image still in transit."""
        if self.sub is None:
            return
        got, self._received_since_check = self._received_since_check, 0
        if got or self._input_warned:
            return
        pubs = self.get_publishers_info_by_topic(self.input_topic)
        if not pubs:
            self._once("no_publisher", lambda: self.get_logger().info(f"waiting for a publisher on {self.input_topic}"))
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
        self._input_warned = True
        self._problem(
            "warn",
            f"{len(pubs)} publisher(s) on {self.input_topic} but no image for {self.cfg.no_input_warn_s:.0f} s; "
            f"{cause} (publishers: {desc}; this node subscribes {self.cfg.qos_reliability}, "
            f"depth {self.cfg.qos_depth})",
            key="no_input",
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

    def _problem(self, level: str, message: str, key: str, bad_input: bool = False) -> None:
        """Count a problem for /diagnostics and log it once per kind."""
        self.stats.on_problem(level, message, bad_input)
        log = self.get_logger()
        self._once(key, lambda: (log.error if level == "error" else log.warning)(message + " (logged once)"))

    def _publish_diagnostics(self) -> None:
        info = dict(self.detector.describe())
        info.update(
            backend="torch",
            enabled=str(self.cfg.enabled),
            classes=",".join(self.detector.classes),
            num_classes=str(len(self.detector.classes)),
            vocabulary_version=str(self.detector.vocabulary_version),
            input_topic=self.input_topic,
            tracking=self.cfg.tracking,
        )
        if self.tracker is not None:
            info["live_tracks"] = str(self.tracker.live_tracks)
        arr = diagnostic_array(
            self.get_clock().now().to_msg(),
            f"{self.get_name()}: detector",
            info["device"],
            self.stats.snapshot(),
            info,
            problem_window_s=max(5.0, 3 * self.cfg.diagnostics_period_s),
        )
        self.pub_diagnostics.publish(arr)

    def shutdown(self) -> None:
        self._stop_input()


class DetectorNode(DetectorWiring, Node):
    """The detector node: loads the model and starts listening at construction."""

    def __init__(self, node_name: str = DEFAULT_NODE_NAME, **kwargs):
        Node.__init__(self, node_name, **kwargs)
        self._setup()
        self._load()
        self._start()


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
    """The portable rclpy main (Humble to Kilted): init, build, spin on 4 threads, shut down.

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
            executor = MultiThreadedExecutor(num_threads=4)
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
