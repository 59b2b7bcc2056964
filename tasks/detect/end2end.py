"""Detection with decoding and NMS in the graph (`cvkit export --nms`): postprocess.py's recipe on a
batch, written with operators ONNX has, so that an exported file outputs final boxes.

`EndToEndDetector(detector, cfg)` takes what `DetectTask.preprocess` feeds the detector, images
(B, 3, H, W), and returns OUTPUT_LAYOUT (the outputs of TensorRT's EfficientNMS):

- `num_dets` (B,) int64: the number of detections of each image;
- `boxes` (B, D, 4) float32: x1y1x2y2 in input pixels; `scores` (B, D) float32; `labels` (B, D)
  int64 class indices; D = cfg.max_per_img (at most levels x nms_pre); each image's detections
  best first, zeros after them.

The steps are postprocess.py's: per level, class scores (sigmoid, or softmax without background),
the best `nms_pre` (anchor, class) pairs above `score_thr`, their boxes decoded and clipped; then
class-wise NMS (cvkit.nn.nms.nms_mask: ONNX's NonMaxSuppression) and the best `max_per_img`.
Each level's pairs are padded with `nms_pre` placeholders scoring -1, so that its top-k has the same
k at every input size (dynamic exports). Two differences, none for a frame of the input's size:
- boxes are clipped to the whole input, not to the resized image inside a letterbox (the same
  when the resized frame fills the input: a frame of the input's aspect ratio, or a model that
  resizes without keeping it);
- NMS and `min_bbox_size` work in input pixels, not original ones: IoUs are equal up to float
  rounding, which may flip a box whose IoU with another is at the threshold.

`predict` maps the outputs back to original pixels: the task's post-processing when it runs a file
exported with --nms.
"""
from __future__ import annotations

from dataclasses import asdict

import torch
from torch import Tensor, nn

from cvkit.errors import UsageError
from cvkit.nn.nms import nms_mask

from .detector import Detector
from .losses import flatten_levels
from .postprocess import DetectConfig, Detections, keep_classes, large_enough, level_scores, map_boxes_back

OUTPUT_LAYOUT = ("num_dets (B,) int64; boxes (B, max_det, 4) float32 x1y1x2y2 in input pixels; "
                 "scores (B, max_det) float32; labels (B, max_det) int64; best first, "
                 "rows from num_dets on are zero")


class EndToEndDetector(nn.Module):
    """`detector` followed by its post-processing with the settings `cfg`, in the graph."""

    def __init__(self, detector: Detector, cfg: DetectConfig):
        super().__init__()
        self.detector, self.cfg = detector, cfg

    @property
    def export_metadata(self) -> dict:
        """What `cvkit export` stores with the file: the output layout and the settings in the graph."""
        return {"output_layout": OUTPUT_LAYOUT, "postprocess": asdict(self.cfg)}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        head, cfg = self.detector.head, self.cfg
        cls_maps, reg_maps = self.detector(images)
        batch, k = images.shape[0], head.num_classes
        all_scores, all_labels, all_boxes = [], [], []
        for cls_map, reg_map, anchors in zip(cls_maps, reg_maps, head.anchors(cls_maps)):
            scores = keep_classes(level_scores(cls_map, k, head.softmax), cfg.classes)
            scores = scores.flatten(1)  # (B, pairs): pair = anchor * k + class
            pairs = scores.shape[1]
            placeholders = scores.new_full((batch, cfg.nms_pre), -1.0)
            scores, pair = torch.cat([scores, placeholders], 1).topk(cfg.nms_pre, 1)
            pair = pair.clamp(max=pairs - 1)  # placeholders stand on the last pair, scoring -1
            anchor = torch.div(pair, k, rounding_mode="floor")
            deltas = flatten_levels([reg_map.float()], 4).gather(1, anchor[..., None].expand(-1, -1, 4))
            all_boxes.append(head.coder.decode(anchors[anchor], deltas, max_shape=images.shape[-2:]))
            all_scores.append(scores)
            all_labels.append(pair % k)
        scores, labels, boxes = torch.cat(all_scores, 1), torch.cat(all_labels, 1), torch.cat(all_boxes, 1)
        scores = torch.where(large_enough(boxes, cfg.min_bbox_size), scores, -1.0)
        keep = nms_mask(boxes, scores, labels, cfg.iou_threshold, cfg.score_thr, cfg.max_per_img)
        candidates = len(cls_maps) * cfg.nms_pre  # a constant, so the output size is one at every input size
        scores, order = torch.where(keep, scores, -1.0).topk(min(cfg.max_per_img, candidates), 1)
        num_dets = keep.sum(1)
        filled = torch.arange(order.shape[1], device=order.device) < num_dets[:, None]
        return {"num_dets": num_dets,
                "boxes": boxes.gather(1, order[..., None].expand(-1, -1, 4)) * filled[..., None],
                "scores": scores * filled,
                "labels": labels.gather(1, order) * filled}

    def predict(self, raw: dict[str, Tensor], metas: list[dict],
                cfg: DetectConfig | None = None) -> list[Detections]:
        """One `Detections` per image in original pixels (metas: see postprocess.py). `cfg` (checked
        by `check_settings`) may raise the score threshold or lower `max_per_img`, which filter the
        graph's detections exactly as postprocess.py would; or pick classes, which filter them too
        (the same unless the other classes took places in the graph's `nms_pre` or `max_per_img`)."""
        cfg = cfg or self.cfg
        out = []
        for i, meta in enumerate(metas):
            n = int(raw["num_dets"][i])
            boxes = map_boxes_back(raw["boxes"][i, :n].float(), meta)
            scores, labels = raw["scores"][i, :n].float(), raw["labels"][i, :n]
            keep = (scores > cfg.score_thr) & large_enough(boxes, cfg.min_bbox_size)
            if cfg.classes is not None:
                keep &= torch.isin(labels, torch.tensor(cfg.classes, dtype=labels.dtype))
            keep = keep.nonzero()[:cfg.max_per_img, 0]
            out.append(Detections(boxes[keep], scores[keep], labels[keep]))
        return out


def exported_config(settings: dict) -> DetectConfig:
    """The DetectConfig of a file's `postprocess` metadata."""
    classes = settings.get("classes")
    return DetectConfig(**{**settings, "classes": None if classes is None else tuple(classes)})


def check_settings(exported: DetectConfig, cfg: DetectConfig) -> None:
    """UsageError when a run's settings `cfg` (--conf, --iou, --max-det) ask for detections that the
    graph of a file exported with `exported` has already dropped."""
    if cfg.iou_threshold != exported.iou_threshold:
        raise UsageError(f"--iou {cfg.iou_threshold}: this file was exported with NMS at IoU "
                         f"{exported.iou_threshold} in its graph; export it again with "
                         f"--set args.iou={cfg.iou_threshold}")
    if cfg.score_thr < exported.score_thr:
        raise UsageError(f"--conf {cfg.score_thr}: this file was exported with --nms keeping scores above "
                         f"{exported.score_thr}; export it again with --set args.conf={cfg.score_thr}")
    if cfg.max_per_img > exported.max_per_img:
        raise UsageError(f"--max-det {cfg.max_per_img}: this file was exported with --nms keeping "
                         f"{exported.max_per_img} detections per image; export it again with "
                         f"--set args.max_det={cfg.max_per_img}")
