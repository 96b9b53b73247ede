"""dart_ros: real-time open-vocabulary multi-class detection with SAM3 and the DART method.

from dart_ros import Detector, DetectorConfig
"""

import warnings

# sam3 0.1.4 emits these at import time on machines without CUDA; they say nothing about our use.
warnings.filterwarnings("ignore", message="CUDA is not available or torch_xla is imported", category=UserWarning)
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)

try:  # the installed distribution's version, which setup.py reads from package.xml
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("dart_ros")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["Detector", "DetectorConfig", "Detections"]


def __getattr__(name):
    # Lazy: `import dart_ros` stays cheap (the node imports torch only when it builds the model).
    if name == "Detector":
        from dart_ros.detector import Detector

        return Detector
    if name == "DetectorConfig":
        from dart_ros.config import DetectorConfig

        return DetectorConfig
    if name == "Detections":
        from dart_ros.types import Detections

        return Detections
    raise AttributeError(name)
