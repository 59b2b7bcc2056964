"""Box IoU and greedy non-maximum suppression in plain PyTorch (no compiled kernels).

`nms` keeps exactly what torchvision's / mmcv's kernels keep, in the same order: boxes sorted by
score (descending, ties in input order), a box is dropped when its IoU with a kept, higher-ranked
box is strictly greater than the threshold; IoU has no +1 on widths. Instead of a Python loop over
boxes, the greedy recurrence keep[j] = not any(keep[i] and IoU[i, j] > t for i < j) is solved on
blocks of the sorted boxes: boxes suppressed by kept boxes of earlier blocks are removed with one
matrix test, and inside a block the recurrence is iterated to its (unique) fixed point.
`batched_nms` sorts the boxes by class first (score order inside each class), so a block only
meets earlier kept boxes of its own first class.

`nms_mask` is the batched form for exported graphs: PyTorch runs `nms`, and torch.onnx.export
writes ONNX's standard NonMaxSuppression operator, whose reference semantics (onnxruntime's) are
the same: suppression at IoU strictly above the threshold, scores strictly above the score
threshold, ties in input order.
"""
from __future__ import annotations

import torch
from torch import Tensor

_BLOCK = 256


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU matrix (len(a), len(b)) of x1y1x2y2 boxes, without +1, computed as the NMS kernels do."""
    a, b = a.T[:, :, None], b.T[:, None, :]  # coordinates as (4, N, 1) and (4, 1, M)
    w = (torch.minimum(a[2], b[2]) - torch.maximum(a[0], b[0])).clamp_(min=0)
    h = (torch.minimum(a[3], b[3]) - torch.maximum(a[1], b[1])).clamp_(min=0)
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _greedy_within(suppress: Tensor, alive: Tensor) -> Tensor:
    """Solve keep[j] = alive[j] and not any(keep[i] and suppress[i, j], i < j) by iteration; the
    recurrence is triangular, so its fixed point is unique and reached in at most n steps."""
    keep = alive.clone()
    while True:
        new = alive & ~(suppress & keep[:, None]).any(0)
        if torch.equal(new, keep):
            return keep
        keep = new


def _greedy(boxes: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Keep mask of greedy NMS over `boxes` already in processing order, where boxes of different
    `groups` never suppress each other and each group is contiguous."""
    keep = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    for start in range(0, len(boxes), _BLOCK):
        block, block_groups = boxes[start:start + _BLOCK], groups[start:start + _BLOCK]
        earlier = keep[:start] & (groups[:start] == block_groups[0])
        alive = ~(box_iou(boxes[:start][earlier], block) > iou_threshold).any(0)
        same = block_groups[:, None] == block_groups[None, :]
        suppress = torch.triu((box_iou(block, block) > iou_threshold) & same, diagonal=1)
        keep[start:start + _BLOCK] = _greedy_within(suppress, alive)
    return keep


def _nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    by_score = torch.sort(scores, descending=True, stable=True).indices
    order = by_score[torch.sort(groups[by_score], stable=True).indices]
    kept = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    kept[order[_greedy(boxes[order], groups[order], iou_threshold)]] = True
    return by_score[kept[by_score]]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the boxes (x1y1x2y2, (N, 4)) that greedy NMS keeps, by decreasing score."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    return _nms(boxes, scores, torch.zeros(len(boxes), dtype=torch.long, device=boxes.device), iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-wise NMS: boxes of different `idxs` never suppress each other; kept indices by
    decreasing score over all classes. As mmcv does, each class is shifted by
    idx * (max coordinate + 1) before IoUs are taken, so they round exactly as mmcv's."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return _nms(boxes + offsets[:, None], scores, idxs, iou_threshold)


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX's NonMaxSuppression: boxes (B, N, 4), scores (B, C, N) -> selected (S, 3) rows (batch,
    class, box): per image and class, the boxes scoring above `score_threshold` that greedy NMS
    keeps, at most `max_per_class`, by batch, class, then decreasing score."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
                score_threshold: float) -> Tensor:
        rows = [torch.zeros(0, 3, dtype=torch.long, device=boxes.device)]
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                idx = torch.nonzero(scores[b, c] > score_threshold)[:, 0]
                kept = idx[nms(boxes[b, idx], scores[b, c, idx], iou_threshold)][:max_per_class]
                rows.append(torch.stack([torch.full_like(kept, b), torch.full_like(kept, c), kept], 1))
        return torch.cat(rows)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
        def const(value, dtype):
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))

        return g.op("NonMaxSuppression", boxes, scores, const(max_per_class, torch.long),
                    const(iou_threshold, torch.float), const(score_threshold, torch.float))


def nms_mask(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, score_threshold: float,
             max_keep: int) -> Tensor:
    """(B, N) mask of the boxes (B, N, 4) that class-wise NMS keeps in each image, among those whose
    `scores` (B, N) are above `score_threshold`: the best `max_keep`. Classes `idxs` (B, N) are kept
    apart as in `batched_nms`, by offsets of idx * (max coordinate of the image's candidates + 1).
    Exports to ONNX as one NonMaxSuppression."""
    candidates = (scores > score_threshold)[..., None]
    extent = torch.where(candidates, boxes, torch.zeros_like(boxes)).amax((1, 2))
    offsets = idxs.to(boxes) * (extent[:, None] + 1)
    selected = _NonMaxSuppression.apply(boxes + offsets[..., None], scores[:, None], max_keep, iou_threshold,
                                        score_threshold)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[selected[:, 0], selected[:, 2]] = True
    return keep
