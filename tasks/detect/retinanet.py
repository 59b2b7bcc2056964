"""RetinaNet's head: "Focal Loss for Dense Object Detection", Lin et al., ICCV 2017
(arXiv 1708.02002), as mmdet 3.3's `RetinaHead` (configs/retinanet/retinanet_r50_fpn_1x_coco.py).

What is new: the focal loss, which down-weights the easy negatives that dominate a dense detector's
~100k anchors, so a one-stage detector trains to two-stage accuracy; and a classifier bias
initialised to the prior 0.01 so that early training is not swamped by background loss.

Two subnets shared over the pyramid levels, each 4 x (3x3 conv 256 + ReLU), then `retina_cls`
(A*K channels, channel = anchor*K + class, sigmoid) and `retina_reg` (A*4 deltas). 9 anchors per
location (3 octave scales x 3 ratios). Training: max-IoU assignment (positive >= 0.5, background
< 0.4), focal loss (gamma 2, alpha 0.25) and L1 on the deltas (or smooth L1 with beta 1/9, the
older mmdet configs'), both divided by the number of positives.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from cvkit.errors import UsageError
from cvkit.nn.anchors import retinanet_anchors
from cvkit.nn.box_coder import DeltaXYWHCoder
from cvkit.nn.conv_module import ConvModule
from cvkit.nn.spec import FeatureSpec

from .losses import box_regression_loss, flatten_levels, max_iou_assign, sigmoid_focal_loss
from .postprocess import DetectConfig, Detections, postprocess

PAPER = "Focal Loss for Dense Object Detection (Lin et al., ICCV 2017, arXiv 1708.02002)"


class RetinaHead(nn.Module):
    """Dense head on a pyramid of equal-width maps (`in_spec`, e.g. FPN's P3-P7); anchors use the
    pyramid's strides. Keys follow mmdet: `cls_convs.i.conv`, `reg_convs.i.conv`, `retina_cls`,
    `retina_reg`."""

    softmax = False  # class scores are sigmoids

    def __init__(self, in_spec: FeatureSpec, num_classes: int = 80, feat_channels: int = 256,
                 stacked_convs: int = 4, octave_base_scale: float = 4, scales_per_octave: int = 3,
                 ratios=(0.5, 1.0, 2.0), prior_prob: float = 0.01, box_loss: str = "l1"):
        super().__init__()
        if len(set(in_spec.channels)) != 1:
            raise UsageError(f"RetinaHead shares its convs over levels, so all levels need one width; "
                             f"got {in_spec.channels} (put an FPN in front)")
        if box_loss not in ("l1", "smooth_l1"):
            raise UsageError(f"box_loss must be 'l1' or 'smooth_l1', got {box_loss!r}")
        self.num_classes = num_classes
        self.box_loss = box_loss
        self.anchor_generator = retinanet_anchors(in_spec.strides, octave_base_scale, scales_per_octave, ratios)
        self.coder = DeltaXYWHCoder()
        self.test_cfg = DetectConfig(score_thr=0.05, nms_pre=1000, iou_threshold=0.5, max_per_img=100)
        a = self.anchor_generator.num_base_anchors[0]
        chans = [in_spec.channels[0]] + [feat_channels] * stacked_convs
        self.cls_convs = nn.ModuleList(ConvModule(i, o, 3, padding=1) for i, o in itertools.pairwise(chans))
        self.reg_convs = nn.ModuleList(ConvModule(i, o, 3, padding=1) for i, o in itertools.pairwise(chans))
        self.retina_cls = nn.Conv2d(chans[-1], a * num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(chans[-1], a * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.retina_cls.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Raw class logits (N, A*K, H, W) and deltas (N, A*4, H, W), one per level."""
        cls_scores, bbox_preds = [], []
        for x in feats:
            c, r = x, x
            for conv in self.cls_convs:
                c = conv(c)
            for conv in self.reg_convs:
                r = conv(r)
            cls_scores.append(self.retina_cls(c))
            bbox_preds.append(self.retina_reg(r))
        return cls_scores, bbox_preds

    def anchors(self, maps: list[Tensor]) -> list[Tensor]:
        return self.anchor_generator.grid_priors([m.shape[-2:] for m in maps], device=maps[0].device)

    def predict(self, cls_scores: list[Tensor], bbox_preds: list[Tensor], metas: list[dict],
                cfg: DetectConfig | None = None) -> list[Detections]:
        return postprocess(cls_scores, bbox_preds, self.anchors(cls_scores), self.coder, metas,
                           cfg or self.test_cfg, self.num_classes, self.softmax)

    def loss(self, cls_scores: list[Tensor], bbox_preds: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        """Focal loss and box loss, each summed and divided by the number of positive anchors."""
        anchors = torch.cat(self.anchors(cls_scores))
        logits = flatten_levels(cls_scores, self.num_classes)
        deltas = flatten_levels(bbox_preds, 4)
        loss_cls, loss_box, num_pos = logits.new_zeros(()), logits.new_zeros(()), 0
        for i, target in enumerate(targets):
            assigned = max_iou_assign(anchors, target["boxes"], 0.5, 0.4, 0.0, gt_max_assign_all=True)
            pos = assigned > 0
            gt = assigned[pos] - 1
            onehot = logits.new_zeros(len(anchors), self.num_classes)
            onehot[pos.nonzero()[:, 0], target["labels"][gt].long()] = 1
            valid = assigned >= 0
            loss_cls = loss_cls + sigmoid_focal_loss(logits[i][valid], onehot[valid]).sum()
            box_targets = self.coder.encode(anchors[pos], target["boxes"][gt])
            loss_box = loss_box + box_regression_loss(deltas[i][pos], box_targets, self.box_loss,
                                                      beta=1 / 9).sum()
            num_pos += int(pos.sum())
        n = max(num_pos, 1)
        return {"loss_cls": loss_cls / n, "loss_box": loss_box / n}
