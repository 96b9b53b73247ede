"""Helpers for tests over real DDS: node subprocesses, a test-side rclpy context, waiting."""

from __future__ import annotations

import os
import time
from typing import Callable, List

import pytest


def require_ros():
    """Import rclpy and the interfaces, or skip (fail when the suite says ROS must be there)."""
    try:
        import rclpy  # noqa: F401
        from dart_ros_interfaces.srv import SetClasses  # noqa: F401
        from vision_msgs.msg import Detection2DArray  # noqa: F401
    except ImportError as e:
        if os.environ.get("DART_REQUIRE_ROS") == "1":
            raise
        pytest.skip(f"ROS 2 environment not available ({e}); run ./tools/test.sh")


class RosClient:
    """A test-side node in its own context, spun on demand."""

    def __init__(self, name: str = "dart_test_client"):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context, domain_id=int(os.environ.get("ROS_DOMAIN_ID", "0")))
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            self.executor.spin_once(timeout_sec=0.05)
        if predicate():
            return
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)

    def call(self, client, request, timeout: float = 30.0, resend_s: float = 0.0):
        """The response to ``request``. ``resend_s`` (idempotent requests only): send it again after
        that many seconds without an answer. Right after discovery Fast DDS can drop a server's
        response ("failed to send response (timeout)") when the server has not yet matched the
        client's reply reader; wait_for_service sees only the request side."""
        assert client.wait_for_service(timeout_sec=timeout), f"service {client.srv_name} not available"
        deadline = time.monotonic() + timeout
        while True:
            future = client.call_async(request)
            wait = min(resend_s, deadline - time.monotonic()) if resend_s > 0 else timeout
            try:
                self.spin_until(future.done, wait, f"response of {client.srv_name}")
                return future.result()
            except AssertionError:
                client.remove_pending_request(future)
                if resend_s <= 0 or time.monotonic() >= deadline:
                    raise

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


class Collector:
    """Subscription callback that keeps every message."""

    def __init__(self):
        self.msgs: List = []

    def __call__(self, msg) -> None:
        self.msgs.append(msg)

    def find(self, predicate):
        for m in self.msgs:
            if predicate(m):
                return m
        return None
