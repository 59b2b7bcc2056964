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
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
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


def pair_areas(gt_ids: np.ndarray, pred_ids: np.ndarray, name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The pixel work of PQ for one image: the sorted keys gt_id * OFFSET + pred_id of the (gt, pred)
    id pairs found in two (H, W) id maps, and their pixel counts (intersections)."""
    gt_ids, pred_ids = np.asarray(gt_ids), np.asarray(pred_ids)
    if gt_ids.shape != pred_ids.shape:
        where = f"image {name}: " if name else ""
        raise CvkitError(f"{where}prediction is {pred_ids.shape[1]}x{pred_ids.shape[0]}, "
                         f"ground truth {gt_ids.shape[1]}x{gt_ids.shape[0]}")
    return np.unique(gt_ids.astype(np.uint64) * np.uint64(OFFSET) + pred_ids.astype(np.uint64), return_counts=True)


def _rows(ids: np.ndarray, listed: list[int]) -> np.ndarray:
    """1 + position in `listed` of each of `ids` (uint64), 0 for ids not listed."""
    if not listed:
        return np.zeros(len(ids), np.int64)
    listed = np.asarray(listed, np.uint64)
    order = np.argsort(listed)
    pos = order[np.searchsorted(listed[order], ids).clip(max=len(listed) - 1)]
    return np.where(listed[pos] == ids, pos + 1, 0)


class PanopticQuality:
    """Accumulates PQ counts image by image; `summary()` gives the panopticapi results.

    categories: COCO panoptic category dicts (`id`, `isthing`, ...), in the order the averages visit them.
    Counts live in arrays over the categories: `tp`, `fp`, `fn` and `iou_sum` (the IoUs of the
    matches, added one by one in panopticapi's order, so that the sums agree to the last bit). The
    pixel work (`pair_areas`) is separate from the rules (`update_pairs`), so that readers can do
    it in parallel.
    """

    def __init__(self, categories):
        self.categories = {c["id"]: c for c in categories}
        self.index = {cat: i for i, cat in enumerate(self.categories)}
        self.tp, self.fp, self.fn = (np.zeros(len(self.index), np.int64) for _ in range(3))
        self.iou_sum = np.zeros(len(self.index))

    def update(self, gt_ids: np.ndarray, gt_segments, pred_ids: np.ndarray, pred_segments, name: str = "") -> None:
        """Add one image: (H, W) id maps and their `segments_info` lists (gt entries need `id`,
        `category_id`, `iscrowd`, `area`; predictions `id`, `category_id`)."""
        self.update_pairs(*pair_areas(gt_ids, pred_ids, name), gt_segments, pred_segments, name)

    def update_pairs(self, keys: np.ndarray, inter: np.ndarray, gt_segments, pred_segments, name: str = "") -> None:
        """Add one image from its `pair_areas`. Gt segments of unknown categories count nowhere
        (panopticapi never reports them).

        The rules run on arrays over the (gt, pred) pairs, which come in panopticapi's order
        (ascending gt id, then pred id); segment tables have a row 0 for "no listed segment".
        """
        where = f"image {name}: " if name else ""
        gt_of, pred_of = keys // np.uint64(OFFSET), keys % np.uint64(OFFSET)
        gts = list({s["id"]: s for s in gt_segments}.values())
        preds = list({s["id"]: s for s in pred_segments}.values())
        g, p = _rows(gt_of, [s["id"] for s in gts]), _rows(pred_of, [s["id"] for s in preds])

        unlisted = pred_of[(p == 0) & (pred_of != VOID)]
        if len(unlisted):
            raise CvkitError(f"{where}segment id {int(unlisted[0])} is in the prediction PNG but not in its segments_info")
        pred_area = np.bincount(p, inter, minlength=len(preds) + 1).astype(np.int64)
        absent = [s["id"] for s, area in zip(preds, pred_area[1:].tolist()) if area == 0]
        if absent:
            raise CvkitError(f"{where}segments {sorted(absent)} are in segments_info but not in the prediction PNG")
        unknown = [s for s in preds if s["category_id"] not in self.index]
        if unknown:
            raise CvkitError(f"{where}prediction segment {unknown[0]['id']} has unknown category "
                             f"{unknown[0]['category_id']}")

        g_cat = np.array([-1] + [self.index.get(s["category_id"], -1) for s in gts])
        g_crowd = np.array([False] + [s["iscrowd"] == 1 for s in gts])
        g_area = np.array([0] + [s["area"] for s in gts], np.int64)
        p_cat = np.array([-2] + [self.index[s["category_id"]] for s in preds])
        on_void = gt_of == VOID
        void_area = np.bincount(p[on_void], inter[on_void], minlength=len(preds) + 1).astype(np.int64)

        # matches: same category, gt not a crowd, IoU > 0.5 with the prediction's VOID pixels out of the union
        same = (g > 0) & (p > 0) & ~g_crowd[g] & (g_cat[g] == p_cat[p])
        union = pred_area[p] + g_area[g] - inter - void_area[p]
        iou = np.divide(inter, union, out=np.zeros(len(inter)), where=same)
        match = same & (iou > 0.5)
        self.tp += np.bincount(p_cat[p[match]], minlength=len(self.index))
        np.add.at(self.iou_sum, p_cat[p[match]], iou[match])  # one by one, in order

        # false negatives: unmatched gt segments that are not crowds
        fn_rows = ~g_crowd & (g_cat >= 0)
        fn_rows[g[match]] = False
        self.fn += np.bincount(g_cat[fn_rows], minlength=len(self.index))

        # false positives: unmatched predictions, unless more than half lies on VOID and on the crowd
        # region of their category (the crowd segment listed last)
        last_crowd = np.zeros(len(gts) + 1, bool)
        last_crowd[list({s["category_id"]: row for row, s in enumerate(gts, 1) if s["iscrowd"] == 1}.values())] = True
        on_crowd = last_crowd[g] & (g_cat[g] == p_cat[p])
        ignored = void_area + np.bincount(p[on_crowd], inter[on_crowd], minlength=len(preds) + 1)
        fp_rows = np.zeros(len(preds) + 1, bool)
        fp_rows[1:] = ignored[1:] / pred_area[1:] <= 0.5
        fp_rows[p[match]] = False
        self.fp += np.bincount(p_cat[fp_rows], minlength=len(self.index))

    def summary(self) -> dict:
        """{'All' | 'Things' | 'Stuff': {pq, sq, rq, n}, 'per_class': {cat: {pq, sq, rq}},
        'counts': {cat: {tp, fp, fn, iou_sum}} for the categories with any count}."""
        counts = {cat: {"tp": tp, "fp": fp, "fn": fn, "iou_sum": iou} for cat, tp, fp, fn, iou in
                  zip(self.categories, self.tp.tolist(), self.fp.tolist(), self.fn.tolist(), self.iou_sum.tolist())}
        per_class = {}
        for cat, c in counts.items():
            denom = c["tp"] + 0.5 * c["fp"] + 0.5 * c["fn"]
            per_class[cat] = ({"pq": c["iou_sum"] / denom, "sq": c["iou_sum"] / c["tp"] if c["tp"] else 0,
                               "rq": c["tp"] / denom} if denom else {"pq": 0.0, "sq": 0.0, "rq": 0.0})
        counted = {cat: c for cat, c in counts.items() if c["tp"] + c["fp"] + c["fn"] > 0}
        results = {}
        for group, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            cats = [cat for cat in counted if isthing is None or (self.categories[cat]["isthing"] == 1) == isthing]
            n = len(cats)
            results[group] = {k: sum(per_class[c][k] for c in cats) / n if n else 0.0 for k in ("pq", "sq", "rq")}
            results[group]["n"] = n
        results["per_class"] = per_class
        results["counts"] = counted
        return results


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """(H, W) uint32 segment ids of an RGB panoptic PNG: OpenCV decodes, its BGR -> RGBA
    conversion lays each pixel out as the little-endian bytes of R + 256 G + 256^2 B (+ alpha)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if bgr is None:
        raise CvkitError(f"{path}: cannot read this panoptic PNG (missing or not an image)")
    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        channels = 1 if bgr.ndim == 2 else bgr.shape[2]
        raise CvkitError(f"{path}: panoptic PNGs are 8-bit RGB (id = R + 256 G + 256^2 B), this one has "
                         f"{channels} channel(s) of {bgr.dtype}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA).view("<u4")[..., 0] & np.uint32(0xFFFFFF)


def read_pair_areas(paths, names, workers: int = 4, ahead: int = 8):
    """`pair_areas` of each (gt PNG, pred PNG) path pair, in order, computed by a pool of `workers`
    threads up to `ahead` images in advance (PNG decoding and numpy's sort release the GIL)."""

    def work(gt_path, pred_path, name):
        return pair_areas(read_panoptic_png(gt_path), read_panoptic_png(pred_path), name)

    with ThreadPoolExecutor(workers) as pool:
        pending = deque()
        for (gt_path, pred_path), name in zip(paths, names):
            pending.append(pool.submit(work, gt_path, pred_path, name))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def pq_compute(gt_json: str | Path, pred_json: str | Path, gt_folder: str | Path, pred_folder: str | Path) -> dict:
    """panopticapi's `pq_compute` on COCO panoptic files: JSONs with `annotations` (image_id, file_name,
    segments_info) and, in the gt, `categories`; PNGs in the two folders. Every gt image needs a
    prediction (matched by image_id). Returns `PanopticQuality.summary()`."""
    gt_data = json.loads(Path(gt_json).read_text())
    pred_data = json.loads(Path(pred_json).read_text())
    preds = {a["image_id"]: a for a in pred_data["annotations"]}
    metric = PanopticQuality(gt_data["categories"])
    pairs = []
    for gt_ann in gt_data["annotations"]:
        if gt_ann["image_id"] not in preds:
            raise CvkitError(f"no prediction for image {gt_ann['image_id']} ({gt_ann['file_name']})")
        pairs.append((gt_ann, preds[gt_ann["image_id"]]))
    paths = [(Path(gt_folder) / g["file_name"], Path(pred_folder) / p["file_name"]) for g, p in pairs]
    names = [str(g["image_id"]) for g, _ in pairs]
    for (gt_ann, pred_ann), name, areas in zip(pairs, names, read_pair_areas(paths, names)):
        metric.update_pairs(*areas, gt_ann["segments_info"], pred_ann["segments_info"], name)
    return metric.summary()
