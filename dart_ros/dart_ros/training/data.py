"""Image datasets for distillation, pruning and evaluation, with the model's own preprocessing.

Images come from a directory (recursively) or a text file with one path per line. Every image is
preprocessed exactly as the Detector does it (stretch to S×S with SAM3's antialiased resize, then
(x/255 − 0.5)/0.5), not with ImageNet statistics (a bug of the DART reference's pruning scripts).
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
UNREADABLE_LIST = "unreadable_images.txt"  # one path per line, in a tool's output folder


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded (missing, truncated, not an image)."""


def list_images(source: str) -> List[str]:
    """Sorted image paths under a directory, or the paths listed in a text file."""
    if os.path.isdir(source):
        out = [
            os.path.join(d, f) for d, _, files in os.walk(source) for f in files if f.lower().endswith(IMAGE_SUFFIXES)
        ]
    elif os.path.isfile(source):
        base = os.path.dirname(os.path.abspath(source))
        with open(source) as f:
            out = [
                ln.strip() if os.path.isabs(ln.strip()) else os.path.join(base, ln.strip()) for ln in f if ln.strip()
            ]
    else:
        raise FileNotFoundError(f"no image directory or list file at {source!r}")
    if not out:
        raise ValueError(f"no images found in {source!r}")
    return sorted(out)


def read_rgb(path: str) -> np.ndarray:
    import cv2

    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise UnreadableImageError(f"cannot read image {path!r}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def note_unreadable(log_path: Optional[str], path: str) -> None:
    """Append ``path`` to an unreadable-images list (several ranks and loader workers may append)."""
    if log_path:
        with open(log_path, "a") as f:
            f.write(path + "\n")


def read_unreadable(log_path: str) -> List[str]:
    """The distinct paths of an unreadable-images list, sorted."""
    if not os.path.isfile(log_path):
        return []
    with open(log_path) as f:
        return sorted({ln.strip() for ln in f if ln.strip()})


class ImageDataset(Dataset):
    """(index, (3, S, S) normalised float tensor) for each image; the index keys feature caches.

    An unreadable image is replaced by the next readable one (batches keep their size, so every
    rank of a distributed run takes the same number of steps) and its path appended to
    ``unreadable_log``; with ``strict`` it raises instead.
    """

    def __init__(self, paths: Sequence[str], image_size: int, unreadable_log: str = "", strict: bool = False):
        self.paths = list(paths)
        self.image_size = image_size
        self.unreadable_log = unreadable_log
        self.strict = strict

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from dart_ros.preprocess import preprocess

        for k in range(len(self.paths)):
            j = (i + k) % len(self.paths)
            try:
                image = read_rgb(self.paths[j])
            except UnreadableImageError:
                if self.strict:
                    raise
                note_unreadable(self.unreadable_log, self.paths[j])
                continue
            pixels, _ = preprocess(image, self.image_size, torch.device("cpu"))
            return j, pixels[0]
        raise UnreadableImageError(f"none of the {len(self.paths)} images can be read")
