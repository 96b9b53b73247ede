"""Result and error types shared by the Detector, the runners, the node and the tools."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

import numpy as np


@dataclasses.dataclass
class Detections:
    """Detections of one image, sorted by score (descending).

    Attributes:
        boxes: (K, 4) float32, xyxy in pixels of the *source* image (not the network input).
        scores: (K,) float32 in [0, 1]: σ(logit)·σ(presence).
        class_ids: (K,) int64 indices into ``class_names``.
        class_names: the vocabulary the image was processed with (index = class id).
        image_size: (height, width) of the source image.
        timings_ms: per-stage wall times of this call (``preprocess``, ``backbone``, ``encdec``,
            ``postprocess``, ``total``), filled when the Detector measures them.
        meta: caller metadata carried through unchanged (e.g. a ROS header in the pipeline).
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_names: List[str]
    image_size: tuple
    timings_ms: Dict[str, float] = dataclasses.field(default_factory=dict)
    meta: Optional[Any] = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def labels(self) -> List[str]:
        return [self.class_names[i] for i in self.class_ids.tolist()]

    @staticmethod
    def empty(class_names: List[str], image_size: tuple) -> "Detections":
        return Detections(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int64),
            class_names=list(class_names),
            image_size=tuple(image_size),
        )


class InvalidClassesError(ValueError):
    """A requested vocabulary was rejected; the previous vocabulary stays active."""


class BadImageError(ValueError):
    """A message cannot be turned into an image. ``key`` groups errors for log-once."""

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key


class ImageFormatError(ValueError):
    """The image cannot be interpreted (shape, dtype, layout)."""


def one_line_error(e: BaseException) -> str:
    """One line for a failure shown to a user: the exception's first line, its type when that adds
    something (never torch's advice to unpickle a file unsafely)."""
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    name = type(e).__name__
    if not text:
        return name
    plain = ("ValueError", "RuntimeError", "CheckpointError", "InvalidClassesError", "RunMismatchError",
             "UnreadableImageError", "FileNotFoundError")  # fmt: skip
    return text if name in plain else f"{name}: {text}"
