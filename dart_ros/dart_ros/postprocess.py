"""From raw per-class outputs to detections: score, threshold, NMS, top-k, source pixels.

Pure functions of tensors; the same code post-processes the batched fast path and the per-class
reference path, so comparisons between them test the model paths, not two postprocessors.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Tuple

import numpy as np
import torch

from dart_ros.types import Detections

NMS_MODES = ("per_class", "agnostic", "grouped")


@dataclasses.dataclass(frozen=True)
class PostprocessParams:
    """Attributes:
    confidence_threshold: keep scores strictly above this (0 keeps everything positive).
    nms_iou: IoU above which the lower-scored box is suppressed; >= 1.0 disables NMS.
    nms_mode: ``per_class`` (boxes of different classes never suppress each other),
        ``agnostic`` (across all classes) or ``grouped`` (across the classes of a group).
    nms_groups: for ``grouped``, tuples of class indices that suppress each other.
    max_detections: top-k by score over all classes (0 = unlimited).
    clip_boxes: clip boxes to the source image.
    row_thresholds: a threshold per score row (prompt), replacing ``confidence_threshold``
        (empty = the global one for every row).
    row_classes: the output class of each score row: several prompts of one class merge into it
        before NMS, so the best-scored of overlapping boxes survives (empty = row i is class i).
    """

    confidence_threshold: float = 0.3
    nms_iou: float = 0.7
    nms_mode: str = "per_class"
    nms_groups: Tuple[Tuple[int, ...], ...] = ()
    max_detections: int = 100
    clip_boxes: bool = True
    row_thresholds: Tuple[float, ...] = ()
    row_classes: Tuple[int, ...] = ()

    def lowest_threshold(self) -> float:
        return min(self.row_thresholds) if self.row_thresholds else self.confidence_threshold


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def nms_labels(class_ids: torch.Tensor, mode: str, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """The label each box is NMS-ed under: its class, one shared label, or its group's label."""
    if mode == "per_class":
        return class_ids
    if mode == "agnostic":
        return torch.zeros_like(class_ids)
    if mode == "grouped":
        labels = class_ids.clone()
        # Group g takes label -(g+1): never equal to a class index, so ungrouped classes stay apart.
        for g, members in enumerate(groups):
            if members:
                member = torch.isin(class_ids, torch.as_tensor(list(members), device=class_ids.device))
                labels[member] = -(g + 1)
        return labels
    raise ValueError(f"unknown NMS mode {mode!r}; valid: {NMS_MODES}")


def postprocess(
    scores: torch.Tensor,
    boxes_cxcywh: torch.Tensor,
    scale_xy: Tuple[float, float],
    image_hw: Tuple[int, int],
    params: PostprocessParams,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Select detections from per-class query scores.

    Args:
        scores: (N, Q) final scores in [0, 1].
        boxes_cxcywh: (N, Q, 4) normalised network-frame boxes.
        scale_xy: multipliers from normalised network coordinates to source pixels.
        image_hw: source image (height, width), for clipping.
    Returns:
        boxes (K, 4) xyxy source pixels, scores (K,), class_ids (K,) int64; sorted by score.
    """
    from torchvision.ops import batched_nms

    if params.row_thresholds:
        thresholds = torch.tensor(params.row_thresholds, device=scores.device, dtype=scores.dtype)[:, None]
        keep = scores > thresholds
    else:
        keep = scores > params.confidence_threshold
    class_ids, query_ids = keep.nonzero(as_tuple=True)
    sel_scores = scores[class_ids, query_ids].float()
    boxes = cxcywh_to_xyxy(boxes_cxcywh[class_ids, query_ids].float())
    if params.row_classes:  # prompts -> their output class, before NMS
        class_ids = torch.tensor(params.row_classes, device=class_ids.device, dtype=torch.long)[class_ids]
    sx, sy = scale_xy
    boxes = boxes * torch.tensor([sx, sy, sx, sy], device=boxes.device, dtype=boxes.dtype)
    if params.clip_boxes:
        h, w = image_hw
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    if params.nms_iou < 1.0 and sel_scores.numel():
        labels = nms_labels(class_ids, params.nms_mode, params.nms_groups)
        kept = batched_nms(boxes, sel_scores, labels, params.nms_iou).sort().values
        # Equal scores in candidate order (class-major), whatever order torchvision's CPU or CUDA
        # path returned them in: the same result on every device.
        order = kept[torch.argsort(sel_scores[kept], descending=True, stable=True)]
    else:
        order = torch.argsort(sel_scores, descending=True, stable=True)
    if params.max_detections > 0:
        order = order[: params.max_detections]
    return boxes[order], sel_scores[order], class_ids[order].long()


# Above this many candidates (scores over the threshold) NMS runs on the GPU, below it on the CPU:
# torchvision's CPU NMS is quadratic in the boxes of one class.
HOST_NMS_MAX_CANDIDATES = 512


def to_detections(
    raw,
    info,
    class_names: Sequence[str],
    params: PostprocessParams,
    host_nms_max_candidates: int = HOST_NMS_MAX_CANDIDATES,
) -> Detections:
    """Raw enc-dec outputs (:class:`~dart_ros.model.encdec.EncDecOutput`) of one image ->
    :class:`~dart_ros.types.Detections` in source pixels (``info``: its
    :class:`~dart_ros.preprocess.ResizeInfo`).

    On CUDA: one copy to the host and one wait (for the current stream only), then thresholding,
    NMS and top-k on the CPU, unless more than ``host_nms_max_candidates`` scores pass the
    threshold. The N×Q scores and boxes are small even at 80 classes; on the GPU the same steps
    are many small kernels and synchronisations, each queued behind whatever else the GPU runs (in
    the pipeline: the next frame's backbone). NMS over thousands of candidates (a low threshold
    over many classes) is quadratic and belongs on the GPU.
    """
    scores, boxes = raw.scores(), raw.boxes.float()
    if scores.is_cuda:
        host_scores, host_boxes = scores.to("cpu", non_blocking=True), boxes.to("cpu", non_blocking=True)
        torch.cuda.current_stream(scores.device).synchronize()
        candidates = int((host_scores > params.lowest_threshold()).sum())
        if candidates <= host_nms_max_candidates or params.nms_iou >= 1.0:
            scores, boxes = host_scores, host_boxes
    boxes, scores, ids = postprocess(scores, boxes, (info.scale_x, info.scale_y), info.source_hw, params)
    return Detections(
        boxes=boxes.cpu().numpy().astype(np.float32),
        scores=scores.cpu().numpy().astype(np.float32),
        class_ids=ids.cpu().numpy().astype(np.int64),
        class_names=list(class_names),
        image_size=info.source_hw,
    )
