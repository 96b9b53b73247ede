"""Backbone runner for CUDA: reduced-precision weights, real-valued RoPE, CUDA-graph replay.

The whole detection backbone (ViT trunk + the stride-14 neck branch, or a student + its adapter) is
captured once per input buffer for the fixed input size S. Several buffers (two for the pipeline)
share one memory pool and the weights; each has its own static input and output.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from dart_ros.model.rope_attention import use_real_rope
from dart_ros.runtime.compiled import capture_with_eager_fallback

log = logging.getLogger(__name__)


def prepare_backbone(
    vision: nn.Module,
    dtype: Optional[torch.dtype],
    grid: Optional[int] = None,
    compile_kernels: bool = False,
    tune_gemms: bool = False,
) -> nn.Module:
    """Weights cast to ``dtype`` (if given); a ViT also gets real-valued RoPE and, when ``grid`` (the
    token grid side) is tiled by its windows, runs as :class:`~dart_ros.runtime.fast_vit.FastViTDetection`.

    A student becomes a :class:`~dart_ros.runtime.fast_student.FastStudentDetection` (its own
    re-parameterised, channels-last copy of the weights; ``vision`` stays as it is).

    ``tune_gemms``: the fast ViT's block GEMMs on the fastest measured cuBLASLt algorithm inside
    CUDA graphs (:mod:`dart_ros.runtime.blaslt`; needs nvmath-python, else torch's GEMMs).

    Returns the module whose ``forward_detection`` the runner calls (for a ViT, parameters shared
    with ``vision``).
    """
    from dart_ros.model.student import StudentBackbone

    if isinstance(vision, StudentBackbone):
        from dart_ros.runtime.fast_student import FastStudentDetection

        return FastStudentDetection(vision, dtype, compile_kernels=compile_kernels)
    trunk = getattr(vision, "trunk", None)
    if trunk is not None:
        use_real_rope(trunk)
    if dtype is not None:
        vision.to(dtype)
    if trunk is not None and grid is not None:
        from dart_ros.runtime import blaslt
        from dart_ros.runtime.fast_vit import FastViTDetection

        reduced = dtype in (torch.bfloat16, torch.float16)
        if tune_gemms and reduced and not blaslt.available():
            log.info("nvmath-python not installed: the ViT's GEMMs use torch's cuBLASLt pick")
        gemms = blaslt.GemmTuner() if tune_gemms and reduced and blaslt.available() else None
        try:
            return FastViTDetection(vision, grid, compile_kernels=compile_kernels, gelu_epilogue=reduced, gemms=gemms)
        except ValueError as e:  # e.g. padded windows at an unusual input size: sam3's own blocks
            log.info("fast ViT not used (%s); running sam3's blocks", e)
    return vision


class BackboneGraphs:
    """``forward_detection`` captured in CUDA graphs, one per buffer slot (own input, output and pool).

    ``run(pixels, slot)`` copies the (1, 3, S, S) input into the slot's static buffer, replays, and
    returns the slot's static output (valid until that slot is run again). ``run_batch`` does the
    same for a (B, 3, S, S) batch (several cameras' frames) from a graph per batch size B.
    """

    def __init__(
        self,
        vision: nn.Module,
        image_size: int,
        device: torch.device,
        dtype: torch.dtype,
        slots: int = 2,
        use_graphs: bool = True,
    ):
        self.vision = vision
        self.dtype = dtype
        self.use_graphs = use_graphs
        # One memory pool per slot: graphs sharing a pool may place one graph's output in memory the
        # other uses for intermediates, and the pipeline reads slot t's output while slot t+1 runs.
        self.pools = [torch.cuda.graph_pool_handle() if use_graphs else None for _ in range(slots)]
        # A capture stream of its own: cuBLAS workspaces are per stream and get baked into the graph.
        # Sharing torch's default capture stream with the enc-dec graphs would let the two graphs,
        # replayed concurrently by the pipeline, use one workspace (stream-K GEMMs then deadlock).
        self.capture_stream = torch.cuda.Stream(device=device) if use_graphs else None
        self.inputs: List[torch.Tensor] = []
        self.outputs: List[Optional[torch.Tensor]] = []
        self.graphs: List[Optional[torch.cuda.CUDAGraph]] = []
        for _ in range(slots):
            self.inputs.append(torch.zeros(1, 3, image_size, image_size, device=device, dtype=dtype))
            self.outputs.append(None)
            self.graphs.append(None)
        self.image_size, self.device = image_size, device
        # batch size -> (static input, static output, graph); each with a pool of its own
        self.batch_graphs: Dict[int, Tuple[torch.Tensor, torch.Tensor, torch.cuda.CUDAGraph]] = {}

    def _capture(self, slot: int) -> None:
        def fresh_pool():
            self.pools[slot] = torch.cuda.graph_pool_handle()

        capture_with_eager_fallback(self.vision, "backbone", lambda: self._capture_once(slot), fresh_pool)

    def _capture_once(self, slot: int) -> None:
        x = self.inputs[slot]
        side = self.capture_stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.vision.forward_detection(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pools[slot], stream=side):
            self.outputs[slot] = self.vision.forward_detection(x)
        self.graphs[slot] = graph

    def _capture_batch(self, batch: int) -> None:
        x = torch.zeros(batch, 3, self.image_size, self.image_size, device=self.device, dtype=self.dtype)
        pool = [torch.cuda.graph_pool_handle()]

        def capture():
            side = self.capture_stream
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # compiles and cuDNN's algorithm search, outside the capture
                    self.vision.forward_detection(x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool[0], stream=side):
                out = self.vision.forward_detection(x)
            self.batch_graphs[batch] = (x, out, graph)

        def fresh_pool():
            pool[0] = torch.cuda.graph_pool_handle()

        capture_with_eager_fallback(self.vision, f"backbone (batch {batch})", capture, fresh_pool)

    def run_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, C, P, P) features in the batch graph's static output (valid until
        the next batch of that size)."""
        batch = int(pixels.shape[0])
        if not self.use_graphs:
            return self.vision.forward_detection(pixels.to(self.dtype))
        if batch not in self.batch_graphs:
            self._capture_batch(batch)
        x, out, graph = self.batch_graphs[batch]
        x.copy_(pixels)
        graph.replay()
        return out

    def run(self, pixels: torch.Tensor, slot: int = 0) -> torch.Tensor:
        self.inputs[slot].copy_(pixels)
        if not self.use_graphs:
            return self.vision.forward_detection(self.inputs[slot])
        if self.graphs[slot] is None:
            self._capture(slot)
        self.graphs[slot].replay()
        return self.outputs[slot]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two feature tensors, flattened, in fp32."""
    a, b = a.float().flatten(), b.float().flatten()
    return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12))
