"""Lane metrics, reproducing the official evaluators (conventions: ../shared/fixtures/metrics/NOTES.md).

CULane F1 (XingangPan/SCNN `tools/lane_evaluation`, run as `-w 30 -t 0.5 -c 1640 -r 590`): every
lane with two or more points is interpolated (a natural cubic spline over the chord length, 50
samples per interval; two-point lanes stay one segment), drawn 30 px wide on its own canvas with
nearest-pixel rounding, and compared by pixel IoU. Per image the gt and predicted lanes are
matched by maximum IoU sum (Kuhn-Munkres), then a matched pair counts as a TP when IoU > 0.5;
TP/FP/FN are summed over the images before precision, recall and F.

TuSimple accuracy (TuSimple/tusimple-benchmark `evaluate/lane.py`): per gt lane a threshold of
20 px / cos(its slope), the best row accuracy over all predicted lanes (no one-to-one matching,
so FP can go negative), per-image accuracy / FP / FN averaged over the images.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import cv2
import numpy as np

from cvkit.errors import CvkitError

CULANE_SIZE = (590, 1640)
"""(H, W) of a CULane image."""


# ---------------------------------------------------------------------------------------------
# CULane

def parse_culane_lines(text: str | None) -> list[np.ndarray]:
    """Lanes of a `.lines.txt` file's contents as (n, 2) float64 arrays of (x, y). Every text line
    is a lane, also one with fewer than two points (a blank line is an empty lane); numbers are
    read in pairs until the line runs out or a token is not a number. None (no file) = no lanes."""
    if text is None:
        return []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line opens no new lane
    lanes = []
    for line in lines:
        values = []
        for token in line.split():
            try:
                values.append(float(token))
            except ValueError:
                break
        values = values[:len(values) // 2 * 2]
        lanes.append(np.asarray(values, dtype=np.float64).reshape(-1, 2))
    return lanes


def spline_lane(points: np.ndarray, times: int = 50) -> np.ndarray:
    """The evaluator's interpolation of a lane with >= 3 points, as float32 (x, y): x(t) and y(t)
    as natural cubic splines of the cumulative chord length t, each interval sampled at
    t = k * h_i / times for k < times, then the last point. Points are used in the given order."""
    p = np.asarray(points, dtype=np.float32).astype(np.float64)
    h = np.hypot(*np.diff(p, axis=0).T)
    n = len(p)
    # Second derivatives M (M_0 = M_{n-1} = 0) from the tridiagonal system, Thomas algorithm.
    m = np.zeros((n, 2))
    if n > 2:
        diag = 2 * (h[:-1] + h[1:])
        rhs = 6 * (np.diff(p[1:], axis=0) / h[1:, None] - np.diff(p[:-1], axis=0) / h[:-1, None])
        upper = h[1:-1].copy()
        for i in range(1, n - 2):
            w = h[i] / diag[i - 1]
            diag[i] -= w * upper[i - 1]
            rhs[i] -= w * rhs[i - 1]
        sol = np.zeros_like(rhs)
        sol[-1] = rhs[-1] / diag[-1]
        for i in range(n - 4, -1, -1):
            sol[i] = (rhs[i] - upper[i] * sol[i + 1]) / diag[i]
        m[1:-1] = sol
    a = p[:-1]
    b = np.diff(p, axis=0) / h[:, None] - h[:, None] * (2 * m[:-1] + m[1:]) / 6
    c = m[:-1] / 2
    d = (m[1:] - m[:-1]) / (6 * h[:, None])
    t = (h[:, None] / times) * np.arange(times)[None, :]  # (n-1, times)
    t = t[..., None]
    samples = a[:, None] + b[:, None] * t + c[:, None] * t ** 2 + d[:, None] * t ** 3
    out = np.concatenate([samples.reshape(-1, 2), p[-1:]])
    return out.astype(np.float32)


def lane_mask(points: np.ndarray, width: int = 30, size: tuple[int, int] = CULANE_SIZE) -> np.ndarray:
    """The lane drawn as the evaluator draws it: a uint8 (H, W) mask of ones along the
    interpolated polyline, `width` px thick (8-connected, round caps), points rounded to the
    nearest pixel (ties to even). Consecutive duplicate points are removed first (the official
    tool turns them into NaN). Empty for fewer than two points."""
    mask = np.zeros(size, np.uint8)
    p = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    if len(p) > 1:
        p = p[np.concatenate([[True], np.any(p[1:] != p[:-1], axis=1)])]
    if len(p) < 2:
        return mask
    curve = p if len(p) == 2 else spline_lane(p)
    pix = np.rint(curve).astype(np.int64)
    for (x0, y0), (x1, y1) in zip(pix[:-1].tolist(), pix[1:].tolist()):
        cv2.line(mask, (x0, y0), (x1, y1), 1, width, cv2.LINE_8)
    return mask


def lane_ious(gt: Sequence[np.ndarray], pred: Sequence[np.ndarray], width: int = 30,
              size: tuple[int, int] = CULANE_SIZE) -> np.ndarray:
    """(len(gt), len(pred)) pixel IoUs of the drawn lanes; 0 where a lane has < 2 points."""
    gm = [lane_mask(g, width, size) if len(g) >= 2 else None for g in gt]
    pm = [lane_mask(p, width, size) if len(p) >= 2 else None for p in pred]
    ious = np.zeros((len(gt), len(pred)))
    for i, g in enumerate(gm):
        for j, p in enumerate(pm):
            if g is None or p is None:
                continue
            inter = np.count_nonzero(g & p)
            union = np.count_nonzero(g) + np.count_nonzero(p) - inter
            ious[i, j] = inter / union if union else 0.0
    return ious


def max_weight_matching(weights: np.ndarray) -> np.ndarray:
    """Rows matched to columns maximising the total weight (Hungarian algorithm with potentials,
    O(n^2 m)); the column of each row, -1 for rows left over when there are more rows."""
    w = np.asarray(weights, dtype=np.float64)
    n, m = w.shape
    if n == 0 or m == 0:
        return np.full(n, -1)
    if n > m:
        cols = max_weight_matching(w.T)
        rows = np.full(n, -1)
        rows[cols] = np.arange(m)
        return rows
    cost = -w
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    owner = np.zeros(m + 1, dtype=np.int64)  # owner[j] = row (1-based) assigned to column j
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        owner[0], j0 = i, 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0, delta, j1 = owner[j0], np.inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    cur = cost[i0 - 1, j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(m + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    rows = np.full(n, -1)
    for j in range(1, m + 1):
        if owner[j]:
            rows[owner[j] - 1] = j - 1
    return rows


def culane_match(gt: Sequence[np.ndarray], pred: Sequence[np.ndarray], width: int = 30,
                 iou_thresh: float = 0.5, size: tuple[int, int] = CULANE_SIZE) -> dict:
    """One image: `tp`, `fp`, `fn`, the IoU matrix `ious` (gt x pred) and `gt_to_pred` (the
    matched prediction of each gt lane when the pair is a TP, else -1)."""
    ious = lane_ious(gt, pred, width, size)
    match = max_weight_matching(ious)
    gt_to_pred = np.array([j if j >= 0 and ious[i, j] > iou_thresh else -1 for i, j in enumerate(match)],
                          dtype=np.int64)
    tp = int(np.count_nonzero(gt_to_pred >= 0))
    return {"tp": tp, "fp": len(pred) - tp, "fn": len(gt) - tp, "ious": ious, "gt_to_pred": gt_to_pred}


def culane_scores(tp: int, fp: int, fn: int) -> dict:
    """precision, recall and F as the evaluator prints them: -1 for an empty denominator, F NaN
    when precision + recall = 0."""
    precision = tp / (tp + fp) if tp + fp else -1.0
    recall = tp / (tp + fn) if tp + fn else -1.0
    total = precision + recall
    f = 2 * precision * recall / total if total else math.nan
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "F": f}


def culane_evaluate(images: Iterable[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]], width: int = 30,
                    iou_thresh: float = 0.5, size: tuple[int, int] = CULANE_SIZE) -> dict:
    """CULane TP/FP/FN summed over `images` = (gt lanes, predicted lanes) pairs, then precision,
    recall, F (`culane_scores`). Lanes are (n, 2) arrays of (x, y) in image pixels."""
    tp = fp = fn = 0
    for gt, pred in images:
        r = culane_match(gt, pred, width, iou_thresh, size)
        tp, fp, fn = tp + r["tp"], fp + r["fp"], fn + r["fn"]
    return culane_scores(tp, fp, fn)


# ---------------------------------------------------------------------------------------------
# TuSimple

def tusimple_threshold(gt_lane: Sequence[float], h_samples: Sequence[float], pixel_thresh: float = 20) -> float:
    """pixel_thresh / cos(atan(k)), k the least-squares slope of x on y over the lane's points
    with x >= 0 (0 with fewer than two)."""
    xs, ys = np.asarray(gt_lane, dtype=np.float64), np.asarray(h_samples, dtype=np.float64)
    keep = xs >= 0
    xs, ys = xs[keep], ys[keep]
    k = 0.0
    if len(xs) > 1:
        yc = ys - ys.mean()
        k = float(np.dot(yc, xs - xs.mean()) / np.dot(yc, yc))
    return pixel_thresh / np.cos(np.arctan(k))


def tusimple_line_accuracy(pred: Sequence[float], gt: Sequence[float], thresh: float) -> float:
    """Share of rows where |pred - gt| < thresh, negative values (no point) set to -100 on both."""
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    p = np.where(p >= 0, p, -100.0)
    g = np.where(g >= 0, g, -100.0)
    return float(np.sum(np.where(np.abs(p - g) < thresh, 1.0, 0.0)) / len(g))


def tusimple_bench(pred: Sequence[Sequence[float]], gt: Sequence[Sequence[float]],
                   h_samples: Sequence[float], run_time: float = 0, pixel_thresh: float = 20,
                   pt_thresh: float = 0.85) -> tuple[float, float, float]:
    """(accuracy, FP, FN) of one image, as `LaneEval.bench`."""
    if any(len(p) != len(h_samples) for p in pred):
        raise CvkitError(f"TuSimple: every predicted lane needs {len(h_samples)} values, one per h_sample")
    if run_time > 200 or len(gt) + 2 < len(pred):
        return 0.0, 0.0, 1.0
    line_accs, fn, matched = [], 0.0, 0.0
    for g in gt:
        thresh = tusimple_threshold(g, h_samples, pixel_thresh)
        accs = [tusimple_line_accuracy(p, g, thresh) for p in pred]
        best = max(accs) if accs else 0.0
        if best < pt_thresh:
            fn += 1
        else:
            matched += 1
        line_accs.append(best)
    fp = len(pred) - matched
    if len(gt) > 4 and fn > 0:
        fn -= 1
    total = sum(line_accs)
    if len(gt) > 4:
        total -= min(line_accs)
    return (total / max(min(4.0, len(gt)), 1.0), fp / len(pred) if pred else 0.0,
            fn / max(min(len(gt), 4.0), 1.0))


def tusimple_evaluate(preds: Iterable[dict], gts: Iterable[dict]) -> dict:
    """Accuracy, FP and FN averaged over the gt images, as `LaneEval.bench_one_submit`.
    `preds` / `gts` are the parsed json lines (`raw_file`, `lanes`, gt `h_samples`, pred
    `run_time` in ms, taken as 0 when absent); each gt image needs exactly one prediction."""
    gt_by_file = {g["raw_file"]: g for g in gts}
    preds = list(preds)
    unknown = [p["raw_file"] for p in preds if p["raw_file"] not in gt_by_file]
    if unknown:
        raise CvkitError(f"TuSimple: {len(unknown)} predictions for images without gt, e.g. {unknown[0]}")
    seen = {p["raw_file"] for p in preds}
    if len(preds) != len(gt_by_file) or len(seen) != len(preds):
        missing = [f for f in gt_by_file if f not in seen]
        raise CvkitError(f"TuSimple: need one prediction per gt image; {len(missing)} missing"
                         + (f", e.g. {missing[0]}" if missing else ", some repeated"))
    accuracy = fp = fn = 0.0
    for p in preds:
        g = gt_by_file[p["raw_file"]]
        a, b, c = tusimple_bench(p["lanes"], g["lanes"], g["h_samples"], p.get("run_time", 0))
        accuracy, fp, fn = accuracy + a, fp + b, fn + c
    n = len(gt_by_file)
    return {"Accuracy": accuracy / n, "FP": fp / n, "FN": fn / n}
