"""cvkit: task heads on interchangeable backbones, run on images, folders, videos and streams."""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import CvkitError, UsageError  # noqa: E402
from .backbones import create_backbone  # noqa: E402
from .presets import load_preset  # noqa: E402
from .api import load_task, predict  # noqa: E402

__all__ = ["__version__", "CvkitError", "UsageError", "create_backbone", "load_preset", "load_task",
           "predict"]
