"""Image preprocessing on the detector's device: one upload of the raw uint8 frame, then colour
conversion, resize and normalisation as SAM3 expects them.

SAM3's processor (sam3 0.1.4, ``Sam3Processor``) resizes the uint8 image to S×S with torchvision's
``Resize`` (bilinear, antialiased; a stretch, not a letterbox) and then maps [0, 255] to [-1, 1]
(mean = std = 0.5). :func:`preprocess` does exactly that by default; ``letterbox=True`` keeps the
aspect ratio and pads bottom/right with zeros in the normalised space (mid-grey).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Tuple, Union

import numpy as np
import torch

from dart_ros.types import ImageFormatError

# Channel layouts the Detector accepts, and how to get RGB out of them.
COLOR_LAYOUTS = {
    "rgb": (3, (0, 1, 2)),
    "bgr": (3, (2, 1, 0)),
    "rgba": (4, (0, 1, 2)),
    "bgra": (4, (2, 1, 0)),
    "mono": (1, (0, 0, 0)),
}
PIXEL_MEAN = 0.5
PIXEL_STD = 0.5


@dataclasses.dataclass(frozen=True)
class ResizeInfo:
    """How network-frame coordinates map back to the source image.

    ``x_src = x_net_normalised * scale_x`` (and likewise for y); for a stretch the scales are
    the source width and height, for a letterbox both are ``S / r`` (r = resize ratio).
    """

    source_hw: Tuple[int, int]
    scale_x: float
    scale_y: float


def as_hwc_tensor(image: Union[np.ndarray, torch.Tensor], color: str) -> torch.Tensor:
    """Validate an HxWxC (or HxW mono) uint8 image; returns it as a tensor (no copy for numpy)."""
    if color not in COLOR_LAYOUTS:
        raise ImageFormatError(f"unknown colour layout {color!r}; valid: {sorted(COLOR_LAYOUTS)}")
    channels = COLOR_LAYOUTS[color][0]
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ImageFormatError(f"image dtype {image.dtype}, expected uint8")
        with warnings.catch_warnings():
            # Frames from ROS messages are read-only views; the tensor is only ever read.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.from_numpy(np.ascontiguousarray(image))
    elif isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            raise ImageFormatError(f"image dtype {image.dtype}, expected torch.uint8")
        t = image
    else:
        raise ImageFormatError(f"image must be a numpy array or a torch tensor, got {type(image).__name__}")
    if t.ndim == 2 and channels == 1:
        t = t[:, :, None]
    if t.ndim != 3 or t.shape[2] != channels:
        raise ImageFormatError(f"image shape {tuple(t.shape)} does not match layout {color!r} (H x W x {channels})")
    if t.shape[0] < 2 or t.shape[1] < 2:
        raise ImageFormatError(f"image of {t.shape[1]}x{t.shape[0]} pixels is too small")
    return t


def upload(hwc: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A frame on ``device``, copied on the current stream.

    A host frame is staged in page-locked memory first: the copy to a GPU is then one asynchronous
    DMA (torch's pinned-memory cache keeps the staging buffer until the copy has run). From
    pageable memory the driver copies through its own bounce buffers with the host taking part.
    """
    if hwc.device.type != "cpu" or device.type != "cuda":
        return hwc.to(device)
    staged = torch.empty(hwc.shape, dtype=hwc.dtype, pin_memory=True)
    staged.copy_(hwc)
    return staged.to(device, non_blocking=True)


def preprocess(
    image: Union[np.ndarray, torch.Tensor],
    size: int,
    device: torch.device,
    color: str = "rgb",
    letterbox: bool = False,
) -> Tuple[torch.Tensor, ResizeInfo]:
    """HxWxC uint8 image -> (1, 3, S, S) float32 normalised on ``device``.

    Args:
        image: HxWxC (or HxW for mono) uint8, numpy array or tensor (any device).
        size: network input side S.
        color: channel layout, one of :data:`COLOR_LAYOUTS`.
        letterbox: keep the aspect ratio and pad bottom/right instead of stretching.
    """
    from torchvision.transforms.v2 import functional as TF

    hwc = as_hwc_tensor(image, color)
    h, w = int(hwc.shape[0]), int(hwc.shape[1])
    x = upload(hwc, device)
    order = COLOR_LAYOUTS[color][1]
    x = x.permute(2, 0, 1)[list(order)]  # (3, H, W) RGB, uint8
    if not letterbox:
        x = TF.resize(x, [size, size], antialias=True)
        info = ResizeInfo((h, w), float(w), float(h))
    else:
        r = size / max(h, w)
        nh, nw = max(1, round(h * r)), max(1, round(w * r))
        x = TF.resize(x, [nh, nw], antialias=True)
        info = ResizeInfo((h, w), size / r, size / r)
    x = (x.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD
    if letterbox:
        x = torch.nn.functional.pad(x, (0, size - x.shape[2], 0, size - x.shape[1]), value=0.0)
    return x.unsqueeze(0), info
