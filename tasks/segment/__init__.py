"""Semantic segmentation: FCN models (paper skip nets, torchvision's and mmseg's FCN) and mIoU."""
