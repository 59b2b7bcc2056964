"""Monocular depth: FastDepth (MobileNet-NNConv5dw-SkipAdd) on any backbone, its metrics, the
`depth` Task, datasets, training and a synthetic scene generator."""
from .task import DepthTask

__all__ = ["DepthTask"]
