"""Training targets and losses of the dense detectors (mmdet 3.3's defaults): max-IoU anchor
assignment, sigmoid focal loss (RetinaNet, Lin et al. 2017) and SSD's softmax loss with hard
negative mining (Liu et al. 2016). Targets per image are dicts with `boxes` (G, 4) x1y1x2y2 in
network-input pixels and `labels` (G,) in [0, num_classes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cvkit.nn.nms import box_iou


def max_iou_assign(anchors: Tensor, gt_boxes: Tensor, pos_iou_thr: float, neg_iou_thr: float,
                   min_pos_iou: float = 0.0, gt_max_assign_all: bool = True) -> Tensor:
    """Per anchor: -1 ignored, 0 background, i+1 assigned to ground truth i (mmdet MaxIoUAssigner).
    Anchors with max IoU < neg_iou_thr are background, >= pos_iou_thr positive; then each ground
    truth also takes its best anchor(s) (all ties with `gt_max_assign_all`) when that IoU is
    >= min_pos_iou and above 0."""
    assigned = torch.full((len(anchors),), -1, dtype=torch.long, device=anchors.device)
    if len(gt_boxes) == 0:
        return assigned.zero_()
    overlaps = box_iou(gt_boxes.float(), anchors.float())
    max_overlaps, argmax = overlaps.max(0)
    assigned[max_overlaps < neg_iou_thr] = 0
    pos = max_overlaps >= pos_iou_thr
    assigned[pos] = argmax[pos] + 1
    gt_max, gt_argmax = overlaps.max(1)
    for i in range(len(gt_boxes)):
        if gt_max[i] >= min_pos_iou and gt_max[i] > 0:
            if gt_max_assign_all:
                assigned[overlaps[i] == gt_max[i]] = i + 1
            else:
                assigned[gt_argmax[i]] = i + 1
    return assigned


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0, alpha: float = 0.25) -> Tensor:
    """Elementwise FL = -alpha_t (1 - p_t)^gamma log(p_t) for one-hot `targets` (float)."""
    p = logits.sigmoid()
    pt = (1 - p) * targets + p * (1 - targets)
    weight = (alpha * targets + (1 - alpha) * (1 - targets)) * pt.pow(gamma)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weight


def box_regression_loss(pred: Tensor, target: Tensor, kind: str = "l1", beta: float = 1.0) -> Tensor:
    """Elementwise L1 (`kind="l1"`) or smooth L1 with transition `beta`."""
    if kind == "l1":
        return (pred - target).abs()
    return F.smooth_l1_loss(pred, target, reduction="none", beta=beta)


def flatten_levels(maps: list[Tensor], k: int) -> Tensor:
    """(N, sum H*W*A, k) from per-level (N, A*k, H, W) maps, in anchor order."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, k) for m in maps], 1)
