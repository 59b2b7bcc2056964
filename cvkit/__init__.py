"""cvkit: task heads on interchangeable backbones, run on images, folders, videos and streams."""
from __future__ import annotations

__version__ = "0.1.0"

from .api import load_task, predict
from .backbones import create_backbone
from .errors import CvkitError, UsageError
from .presets import load_preset

__all__ = [
           "CvkitError",
           "UsageError",
           "__version__",
           "create_backbone",
           "load_preset",
           "load_task",
           "predict",
]
