"""Monocular depth: FastDepth (MobileNet-NNConv5dw-SkipAdd) on any backbone, and its metrics."""
