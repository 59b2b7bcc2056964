"""The (dx, dy, dw, dh) box parameterisation of R-CNN, as mmdet's DeltaXYWHBBoxCoder (used by
RetinaNet and SSD): deltas are normalised by `means`/`stds`, widths are x2 - x1 (no +1), decoded
dw/dh are clamped to |log(wh_ratio_clip)| and decoded boxes can be clipped to the image.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


class DeltaXYWHCoder:
    """encode(anchors, boxes) -> deltas and decode(anchors, deltas) -> boxes, both (..., 4)."""

    def __init__(self, means=(0.0, 0.0, 0.0, 0.0), stds=(1.0, 1.0, 1.0, 1.0), wh_ratio_clip: float = 16 / 1000,
                 clip_border: bool = True):
        self.means = tuple(means)
        self.stds = tuple(stds)
        self.max_ratio = abs(math.log(wh_ratio_clip))
        self.clip_border = clip_border

    def encode(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """Regression targets taking `anchors` to `boxes`."""
        anchors, boxes = anchors.float(), boxes.float()
        pxy = (anchors[..., :2] + anchors[..., 2:]) * 0.5
        pwh = anchors[..., 2:] - anchors[..., :2]
        gxy = (boxes[..., :2] + boxes[..., 2:]) * 0.5
        gwh = boxes[..., 2:] - boxes[..., :2]
        deltas = torch.cat([(gxy - pxy) / pwh, torch.log(gwh / pwh)], -1)
        return (deltas - deltas.new_tensor(self.means)) / deltas.new_tensor(self.stds)

    def decode(self, anchors: Tensor, deltas: Tensor, max_shape: tuple[int, int] | None = None) -> Tensor:
        """Boxes from `deltas` applied to `anchors`; clipped to [0, W] x [0, H] of `max_shape`
        = (H, W) when given (and `clip_border`)."""
        deltas = deltas * deltas.new_tensor(self.stds) + deltas.new_tensor(self.means)
        pxy = (anchors[..., :2] + anchors[..., 2:]) * 0.5
        pwh = anchors[..., 2:] - anchors[..., :2]
        gxy = pxy + pwh * deltas[..., :2]
        gwh = pwh * deltas[..., 2:].clamp(-self.max_ratio, self.max_ratio).exp()
        boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], -1)
        if self.clip_border and max_shape is not None:
            h, w = max_shape
            boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h),
                                 boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)], -1)
        return boxes
