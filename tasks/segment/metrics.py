"""Semantic-segmentation metrics as mmsegmentation 1.2's IoUMetric: aAcc, mIoU and mAcc over a dataset.

Per image only pixels whose label is not `ignore_index` (255) count. Areas per class (intersection,
prediction, label; union = prediction + label - intersection) are summed over all images and divided
once: IoU = I/U, Acc = I/label (per-class recall), aAcc = sum I / sum label. A value outside
0..C-1 (other than the ignore index) drops out of its own histogram only, as torch.histc does in mmseg:
an out-of-range label still counts the prediction at that pixel, an out-of-range prediction still
counts the label. A class with no union (IoU and Acc) or no label pixels (Acc) is NaN and left out of
the means, unless `nan_to_num` replaces it. Summary numbers are percentages rounded to 2 decimals.

Areas are kept exactly (int64) in a (C+1)x(C+1) confusion matrix whose last row and column collect
out-of-range labels and predictions; mmseg sums float32 histograms, which lose integer precision
past 2^24 pixels per class.
"""
from __future__ import annotations

import numpy as np
import torch

from cvkit.errors import CvkitError


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """ADE20K-style label reduction at load time (mmseg `LoadAnnotations(reduce_zero_label=True)`, uint8
    arithmetic): 0 -> 255 (ignore), k -> k - 1, and 255 stays 255."""
    label = np.asarray(label)
    out = label.astype(np.int64) - 1
    out[(label == 0) | (label == 255)] = 255
    return out.astype(np.uint8)


class IoUMetric:
    """Accumulates a confusion matrix over images with `update(pred, label)`; `summary()` gives mmseg's
    {'aAcc', 'mIoU', 'mAcc'} (percent, 2 decimals), `per_class()` the IoU and Acc ratios per class and
    `areas()` the summed areas. `confusion[:C, :C]` counts (label, prediction) pairs."""

    def __init__(self, num_classes: int, ignore_index: int = 255, nan_to_num: float | None = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.nan_to_num = nan_to_num
        self.reset()

    def reset(self) -> None:
        n = self.num_classes + 1
        self.confusion = torch.zeros(n, n, dtype=torch.int64)

    def update(self, pred, label) -> None:
        """Add one image (HxW) or a batch (NxHxW) of integer class maps: `pred` (predicted classes) and
        `label` (ground truth, `ignore_index` = not evaluated), tensors or arrays of the same shape."""
        pred, label = torch.as_tensor(pred).cpu(), torch.as_tensor(label).cpu()
        if pred.shape != label.shape:
            raise CvkitError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in size")
        keep = label != self.ignore_index
        pred, label = pred[keep].long(), label[keep].long()
        c = self.num_classes
        pred = torch.where((pred >= 0) & (pred < c), pred, c)
        label = torch.where((label >= 0) & (label < c), label, c)
        self.confusion += torch.bincount(label * (c + 1) + pred, minlength=(c + 1) ** 2).view(c + 1, c + 1)

    def areas(self) -> dict[str, np.ndarray]:
        """Summed per-class areas (int64): 'intersect', 'union', 'pred', 'label'."""
        c = self.num_classes
        m = self.confusion.numpy()
        intersect = np.diag(m)[:c].copy()
        pred = m[:, :c].sum(0)
        label = m[:c].sum(1)
        return {"intersect": intersect, "union": pred + label - intersect, "pred": pred, "label": label}

    def per_class(self) -> dict[str, np.ndarray]:
        """'IoU' and 'Acc' per class as ratios (float64); NaN where undefined, or `nan_to_num`."""
        a = self.areas()
        with np.errstate(divide="ignore", invalid="ignore"):
            out = {"IoU": a["intersect"] / a["union"], "Acc": a["intersect"] / a["label"]}
        if self.nan_to_num is not None:
            out = {k: np.nan_to_num(v, nan=self.nan_to_num) for k, v in out.items()}
        return out

    def summary(self) -> dict[str, float]:
        """{'aAcc', 'mIoU', 'mAcc'} in percent, rounded to 2 decimals; the means skip NaN classes."""
        a = self.areas()
        total = a["label"].sum()
        result = {"aAcc": a["intersect"].sum() / total if total else float("nan")}
        for name, values in self.per_class().items():
            kept = values[~np.isnan(values)]
            result["m" + name] = kept.mean() if kept.size else float("nan")
        return {k: float(np.round(v * 100, 2)) for k, v in result.items()}
