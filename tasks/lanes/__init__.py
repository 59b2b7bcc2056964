"""Lane detection: SCNN (Spatial CNN) on any backbone, lane post-processing and the CULane / TuSimple metrics."""
from .task import LanesTask

__all__ = ["LanesTask"]
