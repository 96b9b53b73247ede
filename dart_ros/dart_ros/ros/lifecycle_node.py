"""The detector as a managed (lifecycle) node: configure loads the model, activate starts listening.

    python -m dart_ros.ros.lifecycle_node --ros-args -p backbone:=repvit_m2_3 -p autostart:=true
    ros2 lifecycle set /dart configure   # model loaded, services and latched label info up
    ros2 lifecycle set /dart activate    # image subscription and inference running
    ros2 lifecycle set /dart deactivate  # input stopped, model kept (instant re-activate)
    ros2 lifecycle set /dart cleanup     # model and GPU memory released

Same parameters, topics and services as :mod:`dart_ros.ros.node` (they share DetectorWiring).
"""

from __future__ import annotations

from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn

from dart_ros.ros.node import DEFAULT_NODE_NAME, DetectorWiring, spin_node, startup_error


class LifecycleDetectorNode(DetectorWiring, LifecycleNode):
    def __init__(self, node_name: str = DEFAULT_NODE_NAME, **kwargs):
        LifecycleNode.__init__(self, node_name, **kwargs)
        # Before _setup: its parameter callback refuses read-only names such as this one.
        self.autostart = self.declare_parameter("autostart", False).value
        self._setup()

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            self._load()
        except Exception as e:  # a bad checkpoint or device: stay unconfigured, say why
            self.get_logger().error(f"configure failed: {startup_error(e)}")
            self._unload()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self._start()
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_input()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._unload()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._stop_input()
        self._unload()
        return TransitionCallbackReturn.SUCCESS


def _autostart(node: LifecycleDetectorNode) -> None:
    if node.autostart:
        node.trigger_configure()
        node.trigger_activate()


def main(args=None) -> None:
    spin_node(LifecycleDetectorNode, args, on_start=_autostart)


if __name__ == "__main__":
    main()
