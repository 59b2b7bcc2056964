"""Panoptic segmentation: Panoptic-DeepLab heads and grouping, Panoptic SegFormer merging, COCO PQ."""
