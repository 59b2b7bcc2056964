"""Panoptic segmentation: Panoptic-DeepLab heads and grouping, Panoptic SegFormer merging, COCO PQ,
the panoptic Task and its training on COCO panoptic data."""
from .models import PANOPTIC_MODELS
from .task import PanopticTask

__all__ = ["PANOPTIC_MODELS", "PanopticTask"]
