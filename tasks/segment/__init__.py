"""Semantic segmentation: FCN models (paper skip nets, torchvision's and mmseg's FCN), mIoU, the
`segment` Task, datasets and training."""
from .task import SegmentTask

__all__ = ["SegmentTask"]
