"""SSD's head: "SSD: Single Shot MultiBox Detector", Liu et al., ECCV 2016 (arXiv 1512.02325), and
SSDLite's depthwise form (MobileNetV2 paper, Sandler et al., CVPR 2018), as mmdet 3.3's `SSDHead`.

What is new: default boxes of several sizes and aspect ratios on every level of a multi-scale
pyramid, each predicting softmax scores over the classes + background and box offsets with one
small conv, trained with hard negative mining (3 negatives per positive).

Per level one 3x3 conv for scores (A*(K+1), background LAST) and one for deltas (A*4); SSDLite
uses a depthwise 3x3 (+BN, ReLU6) then a 1x1 conv instead. Priors from `ssd_anchors` (4 or 6 per
location); DeltaXYWH with stds (0.1, 0.1, 0.2, 0.2). Training: max-IoU assignment (positive
>= 0.5, else background; each ground truth also takes its best prior), softmax cross-entropy on
the positives and the hardest 3x as many negatives, smooth L1 (beta 1) on the positives' deltas,
both divided by the number of positives.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvkit.errors import UsageError
from cvkit.nn.anchors import ssd_anchors
from cvkit.nn.box_coder import DeltaXYWHCoder
from cvkit.nn.conv_module import ConvModule
from cvkit.nn.spec import FeatureSpec

from .losses import box_regression_loss, flatten_levels, max_iou_assign
from .postprocess import DetectConfig, Detections, postprocess

PAPER = "SSD: Single Shot MultiBox Detector (Liu et al., ECCV 2016, arXiv 1512.02325)"


class SSDHead(nn.Module):
    """One cls and one reg predictor per level of `in_spec`. Priors: `strides`, `ratios` and either
    `input_size` + `basesize_ratio_range` (SSD300/512) or explicit `min_sizes`/`max_sizes`
    (SSDLite); defaults are SSD300 COCO's. Keys follow mmdet: `cls_convs.l.0` (or `.0.conv`,
    `.0.bn`, `.1` when `depthwise`) and `reg_convs.l.*`."""

    softmax = True  # class scores are a softmax over the classes + background (last)

    def __init__(self, in_spec: FeatureSpec, num_classes: int = 80, strides=(8, 16, 32, 64, 100, 300),
                 ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)), input_size: int = 300,
                 basesize_ratio_range=(0.15, 0.9), min_sizes=None, max_sizes=None, depthwise: bool = False,
                 bn_eps: float = 1e-3, neg_pos_ratio: int = 3):
        super().__init__()
        if not len(in_spec) == len(strides) == len(ratios):
            raise UsageError(f"SSDHead got {len(in_spec)} levels but {len(strides)} prior strides and "
                             f"{len(ratios)} ratio sets")
        self.num_classes = num_classes
        self.neg_pos_ratio = neg_pos_ratio
        self.anchor_generator = ssd_anchors(strides, ratios, input_size, basesize_ratio_range, min_sizes, max_sizes)
        self.coder = DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2))
        self.test_cfg = DetectConfig(score_thr=0.02, nms_pre=1000, iou_threshold=0.45, max_per_img=200)
        self.cls_convs, self.reg_convs = nn.ModuleList(), nn.ModuleList()
        for c, a in zip(in_spec.channels, self.anchor_generator.num_base_anchors):
            for convs, out in ((self.cls_convs, a * (num_classes + 1)), (self.reg_convs, a * 4)):
                if depthwise:
                    convs.append(nn.Sequential(ConvModule(c, c, 3, padding=1, groups=c, bn_eps=bn_eps, act=nn.ReLU6),
                                               nn.Conv2d(c, out, 1)))
                else:
                    convs.append(nn.Sequential(nn.Conv2d(c, out, 3, padding=1)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Raw class logits (N, A*(K+1), H, W) and deltas (N, A*4, H, W), one per level."""
        return ([conv(x) for conv, x in zip(self.cls_convs, feats)],
                [conv(x) for conv, x in zip(self.reg_convs, feats)])

    def anchors(self, maps: list[Tensor]) -> list[Tensor]:
        return self.anchor_generator.grid_priors([m.shape[-2:] for m in maps], device=maps[0].device)

    def predict(self, cls_scores: list[Tensor], bbox_preds: list[Tensor], metas: list[dict],
                cfg: DetectConfig | None = None) -> list[Detections]:
        return postprocess(cls_scores, bbox_preds, self.anchors(cls_scores), self.coder, metas,
                           cfg or self.test_cfg, self.num_classes, self.softmax)

    def loss(self, cls_scores: list[Tensor], bbox_preds: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        """Cross-entropy over positives + hardest negatives, smooth L1 over positives; / #positives."""
        anchors = torch.cat(self.anchors(cls_scores))
        logits = flatten_levels(cls_scores, self.num_classes + 1)
        deltas = flatten_levels(bbox_preds, 4)
        loss_cls, loss_box, num_pos = logits.new_zeros(()), logits.new_zeros(()), 0
        for i, target in enumerate(targets):
            assigned = max_iou_assign(anchors, target["boxes"], 0.5, 0.5, 0.0, gt_max_assign_all=False)
            pos = assigned > 0
            gt = assigned[pos] - 1
            labels = torch.full((len(anchors),), self.num_classes, dtype=torch.long, device=anchors.device)
            labels[pos] = target["labels"][gt].long()
            ce = F.cross_entropy(logits[i], labels, reduction="none")
            n_pos = int(pos.sum())
            neg_ce = ce[assigned == 0]
            hardest = neg_ce.topk(min(self.neg_pos_ratio * n_pos, len(neg_ce))).values
            loss_cls = loss_cls + ce[pos].sum() + hardest.sum()
            box_targets = self.coder.encode(anchors[pos], target["boxes"][gt])
            loss_box = loss_box + box_regression_loss(deltas[i][pos], box_targets, "smooth_l1", 1.0).sum()
            num_pos += n_pos
        n = max(num_pos, 1)
        return {"loss_cls": loss_cls / n, "loss_box": loss_box / n}
