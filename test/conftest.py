"""Shared fixtures: tiny random-weight models (CPU), reproducible images, the gpu marker."""

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
