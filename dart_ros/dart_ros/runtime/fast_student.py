"""A distilled student's detection path rebuilt for inference on a GPU; same function, fewer kernels.

- **Re-parameterised** with timm's own ``reparameterize_model``: RepViT's RepVGG-style branches
  (3x3 + 1x1 + identity) become one depthwise conv and every conv-BatchNorm pair one conv
  (about half the modules). Fused in fp32, then cast, so the cast rounds once.
- **Channels-last**: cuDNN's tensor-core convolutions are NHWC kernels; an NCHW network pays a
  layout transform around each of them. The adapter's output stays NHWC, which is exactly the
  token-major (P², C) layout the encoder-decoder reads, so no transpose follows either.
- Only the detection level's adapter runs (the other two levels feed distillation only).
- **Compiled** (``compile_kernels``): ``torch.compile`` fuses the activations, SE gates and residual
  adds between the convolutions (cuDNN keeps the convolutions).

The student module itself is left untouched (it stays loadable and trainable); this one holds
copies of its weights.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from dart_ros.model.student import DETECTION_LEVEL, StudentBackbone
from dart_ros.runtime.compiled import maybe_compiled


class FastStudentDetection(nn.Module):
    """``forward_detection`` of a :class:`StudentBackbone`, re-parameterised and channels-last."""

    def __init__(
        self,
        student: StudentBackbone,
        dtype: Optional[torch.dtype] = None,
        channels_last: bool = True,
        compile_kernels: bool = False,
    ):
        super().__init__()
        from timm.utils import reparameterize_model

        device = next(student.parameters()).device
        # Fused in fp32, cast afterwards. Some of timm's fuse() methods build their new conv on the
        # CPU (TinyViT's ConvNorm): the copy is moved back to the student's device.
        self.backbone = reparameterize_model(copy.deepcopy(student.backbone).float(), inplace=True).eval()
        self.adapter = copy.deepcopy(student.adapters[DETECTION_LEVEL]).float()
        self.size = student.target_sizes[DETECTION_LEVEL]
        self.position_encoding = student.position_encoding
        self.channels_last = channels_last
        self.to(device=device, dtype=dtype)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        # One small eager pass builds the caches some timm modules fill lazily (TinyViT's attention
        # biases, per device). Traced before that, the compiled code's guards fail on the next call
        # and it recompiles, which inside CUDA-graph capture is fatal.
        with torch.inference_mode():
            self.backbone(torch.zeros(1, 3, 224, 224, device=device, dtype=dtype or torch.float32))
        # ``run``: compiled (or eager after a compile failure); ``forward_eager`` the same, uncompiled.
        self.run = maybe_compiled(self.forward_eager, "student backbone", compile_kernels, dynamic=False)

    def forward_detection(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, d_model, P, P) features (NHWC memory if channels-last)."""
        return self.run(x)

    def forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.adapter(self.backbone(x)[DETECTION_LEVEL], self.size)
