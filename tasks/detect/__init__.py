"""Object detection: RetinaNet (FPN, RCNet, SEPC), SSD300 and SSDLite heads on any backbone,
post-processing, losses, datasets (COCO, VOC, synthetic shapes), training and COCO evaluation."""
from .task import DetectResult, DetectTask

__all__ = ["DetectResult", "DetectTask"]
