"""Cache of encoded class names, in memory and optionally on disk.

Entries are keyed by (text-encoder identity, class name): features from one model are never served
to another. The disk file lets a deployment start without building the 354 M-parameter text
encoder, as long as every class it is asked for was encoded before.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from typing import Dict, Iterable, List, Optional, Tuple

import torch

log = logging.getLogger(__name__)

FORMAT = "dart_ros.text_cache/1"
Entry = Tuple[torch.Tensor, torch.Tensor]  # features (T, C) float32, padding mask (T,) bool


class TextCache:
    """Thread-safe map from class name to (features, mask) for one text-encoder identity."""

    def __init__(self, identity: str, path: str = ""):
        self.identity = identity
        self.path = path
        self._entries: Dict[str, Entry] = {}
        self._lock = threading.Lock()
        if path and os.path.isfile(path):
            self._load()

    def _load(self) -> None:
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            log.warning("ignoring unreadable text cache %s: %s", self.path, e)
            return
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            log.warning("ignoring text cache %s: unknown format", self.path)
            return
        if data.get("identity") != self.identity:
            log.warning(
                "ignoring text cache %s: written for model %r, this model is %r",
                self.path,
                data.get("identity"),
                self.identity,
            )
            return
        for name, (feat, mask) in data.get("entries", {}).items():
            self._entries[name] = (feat.float(), mask.bool())
        log.info("loaded %d cached class encodings from %s", len(self._entries), self.path)

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def missing(self, names: Iterable[str]) -> List[str]:
        with self._lock:
            return [n for n in names if n not in self._entries]

    def get(self, names: Iterable[str]) -> List[Entry]:
        with self._lock:
            return [self._entries[n] for n in names]

    def put(self, names: List[str], feats: torch.Tensor, masks: torch.Tensor) -> None:
        """Store (T, N, C) seq-first features and (N, T) masks for ``names``."""
        feats = feats.detach().float().cpu()
        masks = masks.detach().bool().cpu()
        with self._lock:
            for i, n in enumerate(names):
                self._entries[n] = (feats[:, i].clone(), masks[i].clone())

    def save(self, path: Optional[str] = None) -> None:
        """Write atomically (a crash never leaves a half-written cache)."""
        path = path or self.path
        if not path:
            return
        with self._lock:
            data = {"format": FORMAT, "identity": self.identity, "entries": dict(self._entries)}
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        os.close(fd)
        torch.save(data, tmp)
        os.replace(tmp, path)
