"""dart_ros: real-time open-vocabulary multi-class detection with SAM3 and the DART method."""

import warnings

# sam3 0.1.4 emits these at import time on machines without CUDA; they say nothing about our use.
warnings.filterwarnings("ignore", message="CUDA is not available or torch_xla is imported", category=UserWarning)
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)

__version__ = "0.1.0"
