"""Autotuning whose choices persist between processes, so that a second start of the node skips it.

Two ways, by what a kernel's configurations need:

- :func:`autotune`: ``triton.autotune`` with ``cache_results`` (Triton 3.2 and later): the winners go
  to Triton's cache folder (the detector's ``cache_dir``). Triton cannot keep configurations that
  carry a ``pre_hook`` (it times them again in every process).
- :class:`PersistentTuner`: for those, here the TMA attention kernel, whose descriptors take each
  configuration's block shape before the launch. It times the configurations itself on the first
  call per key and keeps the winner's index in a JSON file beside Triton's cache.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import threading
from typing import Callable, Dict, Hashable, Optional, Sequence, Union

log = logging.getLogger(__name__)


def autotune(configs, key, **kwargs):
    import triton

    if "cache_results" in inspect.signature(triton.autotune).parameters:
        kwargs.setdefault("cache_results", True)
    return triton.autotune(configs=configs, key=key, **kwargs)


def triton_cache_dir() -> str:
    """Triton's kernel cache folder (``TRITON_CACHE_DIR``, which the detector points into its
    ``cache_dir``, else Triton's default)."""
    return os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton", "cache")


def _bench_ms(fn: Callable[[], None]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100))


class PersistentTuner:
    """The fastest of ``configs`` per key, timed once per key and kept on disk.

    Args:
        name: names the file (one per kernel).
        configs: the candidates; what is stored is an index into them, so ``version`` must change
            when they do.
        version: what invalidates stored choices (the kernel's source hash), or a callable giving
            it when the file is first needed; hashed into the file name with Triton's version and
            the configs.
        timer: ms of one call of a no-argument callable (default ``triton.testing.do_bench``).
        folder: where the file goes (default: ``<Triton cache>/dart_ros_autotune``, read when the
            first choice is made, after the detector has set ``TRITON_CACHE_DIR``).
    """

    def __init__(
        self,
        name: str,
        configs: Sequence,
        version: Union[str, Callable[[], str]],
        timer: Optional[Callable[[Callable[[], None]], float]] = None,
        folder: Optional[str] = None,
    ):
        self.name = name
        self.configs = list(configs)
        self.version = version
        self.timer = timer or _bench_ms
        self.folder = folder
        self.timings: Dict[str, list] = {}  # key -> ms per config, for the keys timed in this process
        self._chosen: Dict[Hashable, int] = {}
        self._stored: Optional[Dict[str, int]] = None
        self._lock = threading.Lock()

    def path(self) -> str:
        try:
            import triton

            triton_version = triton.__version__
        except ImportError:  # pragma: no cover - only CUDA installs tune
            triton_version = ""
        version = self.version
        if callable(version):
            try:
                version = version()
            except Exception as e:  # noqa: BLE001 - a Triton without source hashes: keyed on its version
                log.debug("%s: no kernel version: %s", self.name, e)
                version = ""
            self.version = version
        configs = [str(c) for c in self.configs]  # str: triton.Config's repr is its address
        digest = hashlib.sha256(f"{version}|{triton_version}|{configs}".encode()).hexdigest()[:16]
        folder = self.folder or os.path.join(triton_cache_dir(), "dart_ros_autotune")
        return os.path.join(folder, f"{self.name}-{digest}.json")

    def _load(self) -> Dict[str, int]:
        if self._stored is None:
            try:
                with open(self.path()) as f:
                    data = json.load(f)
                self._stored = {k: v for k, v in data.items() if isinstance(v, int) and 0 <= v < len(self.configs)}
            except (OSError, ValueError):
                self._stored = {}
        return self._stored

    def _save(self, key: str, index: int) -> None:
        path = self.path()
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            on_disk = {}
            try:  # another process may have added keys since this one read the file
                with open(path) as f:
                    on_disk = json.load(f)
            except (OSError, ValueError):
                pass
            on_disk[key] = index
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(on_disk, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except OSError as e:  # a read-only cache costs the timing at the next start, nothing else
            log.warning("could not keep the %s autotuning choice in %s: %s", self.name, path, e)

    def choose(self, key: Hashable, run: Callable[[object], None]) -> object:
        """The configuration for ``key``; ``run(config)`` launches the kernel with one (timed here
        the first time ``key`` is seen, unless an earlier process stored the choice)."""
        index = self._chosen.get(key)
        if index is not None:
            return self.configs[index]
        with self._lock:
            index = self._chosen.get(key)
            if index is None:
                index = self._load().get(str(key))
            if index is None:
                times = []
                for config in self.configs:
                    try:
                        times.append(self.timer(lambda c=config: run(c)))
                    except Exception as e:  # noqa: BLE001 - a config this GPU cannot run (resources)
                        log.debug("%s: %s failed: %s", self.name, config, e)
                        times.append(math.inf)
                if all(math.isinf(t) for t in times):
                    raise RuntimeError(f"{self.name}: no configuration runs for {key}")
                index = min(range(len(times)), key=times.__getitem__)
                self.timings[str(key)] = times
                self._stored[str(key)] = index
                self._save(str(key), index)
            self._chosen[key] = index
        return self.configs[index]
