"""Panoptic quality (Kirillov et al., "Panoptic Segmentation", CVPR 2019, arXiv 1801.00868), computed
as COCO's evaluator does (cocodataset/panopticapi @ 7bb4655 `pq_compute`; rules in
fixtures/metrics/NOTES.md).

A gt and a predicted segment of the same category match when the gt is not a crowd and their IoU
is > 0.5, the predicted pixels on gt VOID (id 0) taken out of the union; |gt| is the gt JSON's
`area`. Unmatched non-crowd gt segments are FN; an unmatched prediction is a FP unless more than
half of it lies on VOID plus the crowd region of its category (the crowd listed last). Per category
PQ = sum IoU / (TP + FP/2 + FN/2), SQ = sum IoU / TP, RQ = TP / (TP + FP/2 + FN/2); All / Things /
Stuff are plain means over the categories with any TP, FP or FN. Where panopticapi raises
(KeyError on inconsistent ids or categories, ZeroDivisionError for an empty group), cvkit raises
CvkitError for the former and reports an empty group as zeros with n = 0.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cvkit.errors import CvkitError

VOID = 0
OFFSET = 256 ** 3


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB panoptic PNG content -> (H, W) int64 ids = R + 256 G + 256^2 B."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) uint8 RGB, the inverse of `rgb2id`."""
    ids = np.asarray(ids).astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)


@dataclass
class PQCounts:
    """Per-category accumulators: true/false positives, false negatives, sum of TP IoUs."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0


class PanopticQuality:
    """Accumulates PQ counts image by image; `summary()` gives the panopticapi results.

    categories: COCO panoptic category dicts (`id`, `isthing`, ...), in the order the averages visit them.
    """

    def __init__(self, categories):
        self.categories = {c["id"]: c for c in categories}
        self.counts: dict[int, PQCounts] = defaultdict(PQCounts)

    def update(self, gt_ids: np.ndarray, gt_segments, pred_ids: np.ndarray, pred_segments, name: str = "") -> None:
        """Add one image: (H, W) id maps and their `segments_info` lists (gt entries need `id`,
        `category_id`, `iscrowd`, `area`; predictions `id`, `category_id`)."""
        where = f"image {name}: " if name else ""
        gt_ids, pred_ids = np.asarray(gt_ids, np.uint64), np.asarray(pred_ids, np.uint64)
        if gt_ids.shape != pred_ids.shape:
            raise CvkitError(f"{where}prediction is {pred_ids.shape[1]}x{pred_ids.shape[0]}, "
                             f"ground truth {gt_ids.shape[1]}x{gt_ids.shape[0]}")
        gt = {s["id"]: s for s in gt_segments}
        pred = {s["id"]: dict(s) for s in pred_segments}
        listed = set(pred)
        for seg_id, count in zip(*np.unique(pred_ids, return_counts=True)):
            seg_id = int(seg_id)
            if seg_id not in pred:
                if seg_id == VOID:
                    continue
                raise CvkitError(f"{where}segment id {seg_id} is in the prediction PNG but not in its segments_info")
            pred[seg_id]["area"] = int(count)
            listed.discard(seg_id)
            if pred[seg_id]["category_id"] not in self.categories:
                raise CvkitError(f"{where}prediction segment {seg_id} has unknown category "
                                 f"{pred[seg_id]['category_id']}")
        if listed:
            raise CvkitError(f"{where}segments {sorted(listed)} are in segments_info but not in the prediction PNG")

        pairs = {}
        for label, count in zip(*np.unique(gt_ids * np.uint64(OFFSET) + pred_ids, return_counts=True)):
            pairs[(int(label) // OFFSET, int(label) % OFFSET)] = int(count)

        gt_matched, pred_matched = set(), set()
        for (g, p), inter in pairs.items():
            if g not in gt or p not in pred or gt[g]["iscrowd"] == 1:
                continue
            cat = gt[g]["category_id"]
            if cat != pred[p]["category_id"]:
                continue
            union = pred[p]["area"] + gt[g]["area"] - inter - pairs.get((VOID, p), 0)
            iou = inter / union
            if iou > 0.5:
                self.counts[cat].tp += 1
                self.counts[cat].iou_sum += iou
                gt_matched.add(g)
                pred_matched.add(p)

        crowd = {}
        for g, info in gt.items():
            if g in gt_matched:
                continue
            if info["iscrowd"] == 1:
                crowd[info["category_id"]] = g
                continue
            self.counts[info["category_id"]].fn += 1

        for p, info in pred.items():
            if p in pred_matched:
                continue
            ignored = pairs.get((VOID, p), 0)
            if info["category_id"] in crowd:
                ignored += pairs.get((crowd[info["category_id"]], p), 0)
            if ignored / info["area"] > 0.5:
                continue
            self.counts[info["category_id"]].fp += 1

    def summary(self) -> dict:
        """{'All' | 'Things' | 'Stuff': {pq, sq, rq, n}, 'per_class': {cat: {pq, sq, rq}},
        'counts': {cat: {tp, fp, fn, iou_sum}} for the categories with any count}."""
        per_class = {}
        for cat in self.categories:
            c = self.counts.get(cat, PQCounts())
            denom = c.tp + 0.5 * c.fp + 0.5 * c.fn
            per_class[cat] = ({"pq": c.iou_sum / denom, "sq": c.iou_sum / c.tp if c.tp else 0,
                               "rq": c.tp / denom} if denom else {"pq": 0.0, "sq": 0.0, "rq": 0.0})
        results = {}
        for group, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            cats = [cat for cat, info in self.categories.items()
                    if (isthing is None or (info["isthing"] == 1) == isthing) and cat in self.counts
                    and self.counts[cat].tp + self.counts[cat].fp + self.counts[cat].fn > 0]
            n = len(cats)
            results[group] = {k: sum(per_class[c][k] for c in cats) / n if n else 0.0 for k in ("pq", "sq", "rq")}
            results[group]["n"] = n
        results["per_class"] = per_class
        results["counts"] = {cat: asdict(c) for cat, c in self.counts.items() if c.tp + c.fp + c.fn > 0}
        return results


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """(H, W) int64 segment ids of an RGB panoptic PNG."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode != "RGB":
            raise CvkitError(f"{path}: panoptic PNGs are RGB (id = R + 256 G + 256^2 B), this one is {im.mode}")
        return rgb2id(np.asarray(im))


def pq_compute(gt_json: str | Path, pred_json: str | Path, gt_folder: str | Path, pred_folder: str | Path) -> dict:
    """panopticapi's `pq_compute` on COCO panoptic files: JSONs with `annotations` (image_id, file_name,
    segments_info) and, in the gt, `categories`; PNGs in the two folders. Every gt image needs a
    prediction (matched by image_id). Returns `PanopticQuality.summary()`."""
    gt_data = json.loads(Path(gt_json).read_text())
    pred_data = json.loads(Path(pred_json).read_text())
    preds = {a["image_id"]: a for a in pred_data["annotations"]}
    metric = PanopticQuality(gt_data["categories"])
    for gt_ann in gt_data["annotations"]:
        pred_ann = preds.get(gt_ann["image_id"])
        if pred_ann is None:
            raise CvkitError(f"no prediction for image {gt_ann['image_id']} ({gt_ann['file_name']})")
        metric.update(read_panoptic_png(Path(gt_folder) / gt_ann["file_name"]), gt_ann["segments_info"],
                      read_panoptic_png(Path(pred_folder) / pred_ann["file_name"]), pred_ann["segments_info"],
                      name=str(gt_ann["image_id"]))
    return metric.summary()
