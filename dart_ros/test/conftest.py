"""Shared fixtures: tiny random-weight models (CPU), reproducible images, the gpu marker."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dart_ros.config import DetectorConfig
from dart_ros.detector import Detector

# sam3 turns TF32 on at import on Ampere+ GPUs; fp32 comparisons must run in true fp32.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_image(rng, h=241, w=319, channels=3):
    """A random image with some structure (smooth blobs + noise), uint8 HxWxC."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / (7 + 5 * c)) * np.cos(yy / (9 + 3 * c)) for c in range(channels)], -1)
    img = 127 + 80 * base + rng.normal(0, 25, (h, w, channels))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_detector(backbone="tiny", **kw):
    kw.setdefault("device", "cpu")
    return Detector(DetectorConfig(backbone=backbone, **kw))


@pytest.fixture(scope="module")
def tiny_detector():
    return make_detector("tiny", confidence_threshold=0.0)


def run_in_triton_interpreter(module: str, check: str) -> None:
    """``module.check()`` in a fresh process under Triton's interpreter (TRITON_INTERPRET is read
    when kernels are defined, so it cannot be switched on inside this one)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    here = os.path.dirname(os.path.abspath(__file__))
    code = f"import sys; sys.path.insert(0, {here!r}); import {module} as t; t.{check}()"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
