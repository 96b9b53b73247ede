"""Starting and stopping ROS node processes without ``ros2 launch`` (demo, benchmarks, tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Dict, List, Optional


def ros_literal(v) -> str:
    """A Python value as a ``-p name:=value`` literal."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(f'"{x}"' if isinstance(x, str) else str(x) for x in v) + "]"
    if isinstance(v, str) and v == "":
        return '""'
    return str(v)


class RosProcess:
    """``python -m <module> --ros-args -p …`` as a child process, stopped with escalating signals."""

    def __init__(
        self,
        module: str,
        params: Dict[str, object],
        remaps: Optional[Dict[str, str]] = None,
        name: str = "",
        log_path: str = "",
        params_file: str = "",
    ):
        args = [sys.executable, "-u", "-m", module, "--ros-args"]
        if params_file:
            args += ["--params-file", params_file]
        for k, v in params.items():
            args += ["-p", f"{k}:={ros_literal(v)}"]
        for a, b in (remaps or {}).items():
            args += ["-r", f"{a}:={b}"]
        if name:
            args += ["-r", f"__node:={name}"]
        self._start(args, log_path)

    @classmethod
    def from_command(cls, command: List[str], log_path: str = "") -> "RosProcess":
        """A process of a complete command line (e.g. ``NodeLaunch.command()``)."""
        self = cls.__new__(cls)
        self._start(list(command), log_path)
        return self

    def _start(self, args: List[str], log_path: str) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "w") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        if not self.log_path:
            return ""
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self) -> Optional[int]:
        """SIGINT, SIGINT, SIGTERM, SIGKILL with timeouts: rclpy occasionally misses the first signal."""
        for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                continue
        if self._log is not subprocess.DEVNULL and not self._log.closed:
            self._log.close()
        return self.proc.returncode
