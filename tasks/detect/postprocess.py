"""From raw dense-head outputs to detections in original-image pixels (mmdet 3.3's recipe for
RetinaNet and SSD, `BaseDenseHead._predict_by_feat_single` + `_bbox_post_process`):

1. per level: class scores in float32 (sigmoid, or softmax without the last = background column);
2. keep the (anchor, class) pairs scoring above `score_thr`, then the best `nms_pre` pairs;
3. decode their boxes from the anchors, clipped to the network input (`meta["img_shape"]`);
4. all levels together: map the boxes back through the inverse resize/letterbox (`map_boxes_back`);
5. drop boxes whose width or height is not above `min_bbox_size`;
6. class-wise NMS, best first, then the first `max_per_img`.

Per-image meta (a dict; only `img_shape` is required):
- `img_shape` (H, W): the part of the network input boxes are clipped to (the resized image when it
  sits at the top-left, as in mmdet; the whole input for a centred letterbox);
- `scale_factor` (sx, sy) or one float: resized size / original size (default 1);
- `pad` (left, top): where the resized image starts inside the input (default (0, 0));
- `ori_shape` (H, W): the original image; mapped boxes are clipped to it when given.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cvkit.nn.box_coder import DeltaXYWHCoder
from cvkit.nn.nms import batched_nms


@dataclass(frozen=True)
class DetectConfig:
    """Post-processing settings (defaults: RetinaNet's test_cfg; SSD uses 0.02 / 0.45 / 200).
    `classes`, when given, keeps only those class indices."""

    score_thr: float = 0.05
    nms_pre: int = 1000
    iou_threshold: float = 0.5
    max_per_img: int = 100
    min_bbox_size: float = 0.0
    classes: tuple[int, ...] | None = None


@dataclass
class Detections:
    """Boxes (N, 4) x1y1x2y2 float32 in original-image pixels, scores (N,), labels (N,) int64,
    best first."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.scores)


def level_scores(cls_map: Tensor, num_classes: int, softmax: bool) -> Tensor:
    """(..., H*W*A, num_classes) scores of (..., A*K, H, W) logits (one image's, or a batch's),
    location-major like the anchors; with `softmax`, K = num_classes + 1 and the last (background)
    column is dropped."""
    k = num_classes + 1 if softmax else num_classes
    logits = cls_map.float().movedim(cls_map.dim() - 3, -1)  # positive dims: ONNX's Transpose needs them
    logits = logits.reshape(*logits.shape[:-3], -1, k)
    return logits.softmax(-1)[..., :-1] if softmax else logits.sigmoid()


def keep_classes(scores: Tensor, classes: tuple[int, ...] | None) -> Tensor:
    """(..., num_classes) `scores` with the columns of classes outside `classes` zeroed (None: all
    kept)."""
    if classes is None:
        return scores
    keep = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
    keep[list(classes)] = True
    return scores * keep


def filter_topk(scores: Tensor, score_thr: float, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The best `k` (anchor, class) pairs scoring above `score_thr`: (scores, labels, anchor indices),
    by decreasing score."""
    anchor_idx, labels = torch.nonzero(scores > score_thr, as_tuple=True)
    kept = scores[anchor_idx, labels]
    if kept.numel() > k:  # sort only the scores >= the k-th best (ties kept in order): same result
        near = torch.nonzero(kept >= torch.topk(kept, k, sorted=False).values.min())[:, 0]
        kept, labels, anchor_idx = kept[near], labels[near], anchor_idx[near]
    order = torch.sort(kept, descending=True, stable=True).indices[:k]
    return kept[order], labels[order], anchor_idx[order]


def map_boxes_back(boxes: Tensor, meta: dict) -> Tensor:
    """Network-input boxes to original-image pixels: subtract `pad`, divide by `scale_factor`,
    clip to `ori_shape` when given."""
    sf = meta.get("scale_factor", 1.0)
    sx, sy = (sf, sf) if isinstance(sf, (int, float)) else sf
    left, top = meta.get("pad", (0, 0))
    boxes = (boxes - boxes.new_tensor([left, top, left, top])) / boxes.new_tensor([sx, sy, sx, sy])
    if meta.get("ori_shape") is not None:
        h, w = meta["ori_shape"]
        boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                             boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], -1)
    return boxes


def large_enough(boxes: Tensor, min_size: float) -> Tensor:
    """Mask of the (..., 4) boxes whose width and height are both above `min_size`."""
    return (boxes[..., 2:] - boxes[..., :2] > min_size).all(-1)


def postprocess_image(cls_maps: list[Tensor], reg_maps: list[Tensor], anchors: list[Tensor],
                      coder: DeltaXYWHCoder, meta: dict, cfg: DetectConfig, num_classes: int,
                      softmax: bool) -> Detections:
    """The recipe above for one image; `cls_maps[l]` (A*K, H, W), `reg_maps[l]` (A*4, H, W),
    `anchors[l]` (H*W*A, 4)."""
    all_scores, all_labels, all_deltas, all_anchors = [], [], [], []
    for cls_map, reg_map, level_anchors in zip(cls_maps, reg_maps, anchors):
        scores = keep_classes(level_scores(cls_map, num_classes, softmax), cfg.classes)
        scores, labels, idx = filter_topk(scores, cfg.score_thr, cfg.nms_pre)
        all_scores.append(scores)
        all_labels.append(labels)
        all_deltas.append(reg_map.float().permute(1, 2, 0).reshape(-1, 4)[idx])
        all_anchors.append(level_anchors[idx])
    scores, labels = torch.cat(all_scores), torch.cat(all_labels)
    boxes = coder.decode(torch.cat(all_anchors), torch.cat(all_deltas), max_shape=meta["img_shape"])
    boxes = map_boxes_back(boxes, meta)
    valid = large_enough(boxes, cfg.min_bbox_size)
    boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
    keep = batched_nms(boxes, scores, labels, cfg.iou_threshold)[:cfg.max_per_img]
    return Detections(boxes[keep], scores[keep], labels[keep])


def postprocess(cls_scores: list[Tensor], bbox_preds: list[Tensor], anchors: list[Tensor],
                coder: DeltaXYWHCoder, metas: list[dict], cfg: DetectConfig, num_classes: int,
                softmax: bool = False) -> list[Detections]:
    """Detections for each image of a batch of raw outputs (`cls_scores[l]` (N, A*K, H, W),
    `bbox_preds[l]` (N, A*4, H, W)) with the per-level `anchors`."""
    return [postprocess_image([c[i] for c in cls_scores], [r[i] for r in bbox_preds], anchors, coder,
                              meta, cfg, num_classes, softmax)
            for i, meta in enumerate(metas)]
