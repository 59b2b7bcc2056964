"""Lane evaluation: CULane precision / recall / F1 and TuSimple accuracy / FP / FN, from a model
or from predictions saved earlier, and the writers of both prediction formats.

Predictions are read from any of: a folder of CULane `.lines.txt` files (found next to each gt
image's relative path, or under a shorter tail of it), a TuSimple json-lines file (`raw_file`,
`lanes`, `h_samples`; matched to the gt by `raw_file` or its tail), or cvkit's own
`predictions.jsonl` (polylines). Polylines meet the TuSimple protocol by linear interpolation at the
gt's `h_samples` (-2 outside a lane's rows); TuSimple rows meet the CULane protocol as points.

The CULane lane width is the official 30 px for CULane's 590-px-high images and scales with other
heights (`culane_width`); the canvas is each image's own size.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cvkit.errors import CvkitError, UsageError

from .data import LaneDataset, LaneSample
from .metrics import culane_match, culane_scores, parse_culane_lines, tusimple_evaluate
from .postprocess import LANE_ROWS, Lane, postprocess, to_culane_text, to_tusimple
from .task import blur_size


def culane_width(height: int) -> int:
    """The evaluation lane width for images `height` px high: 30 at CULane's 590, scaled."""
    return max(1, round(30 * height / 590))


def lanes_at_rows(points: np.ndarray, h_samples) -> list[float]:
    """x of a polyline (n, 2) at each of `h_samples`, linearly interpolated; -2 outside its rows."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    if len(p) < 2:
        return [-2] * len(h_samples)
    p = p[np.argsort(p[:, 1], kind="stable")]
    ys = np.asarray(h_samples, np.float64)
    xs = np.interp(ys, p[:, 1], p[:, 0])
    inside = (ys >= p[0, 1]) & (ys <= p[-1, 1])
    return [float(x) if ok else -2 for x, ok in zip(xs, inside)]


def _tails(rel: str) -> list[str]:
    parts = Path(rel.lstrip("/")).parts
    return [Path(*parts[i:]).as_posix() for i in range(len(parts))]


class Predictions:
    """Saved predictions of any supported format (module docstring), looked up by gt path."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.folder = None
        self.records: dict[str, tuple[list[np.ndarray], list | None, list | None, float]] = {}
        if self.path.is_dir():
            self.folder = self.path
            return
        if not self.path.is_file():
            raise UsageError(f"predictions not found: {self.path}")
        for n, line in enumerate(self.path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if "raw_file" in rec:  # TuSimple
                    xs, hs = rec["lanes"], rec["h_samples"]
                    polys = [np.asarray([(x, y) for x, y in zip(lane, hs) if x >= 0], np.float64).reshape(-1, 2)
                             for lane in xs]
                    self.records[rec["raw_file"]] = (polys, xs, hs, float(rec.get("run_time", 0)))
                else:  # cvkit predictions.jsonl
                    polys = [np.asarray(lane["points"], np.float64).reshape(-1, 2) for lane in rec["lanes"]]
                    self.records[rec["source"]] = (polys, None, None, 0.0)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise CvkitError(f"{self.path.name}:{n}: not a TuSimple or cvkit prediction line ({e})") from None

    def _find(self, rel: str):
        for tail in _tails(rel):
            if tail in self.records:
                return self.records[tail]
        matches = [k for k in self.records if rel.endswith("/" + k.lstrip("/"))]
        return self.records[matches[0]] if len(matches) == 1 else None

    def polylines(self, rel: str) -> list[np.ndarray]:
        """Predicted lanes of gt image `rel` as (n, 2) arrays; none when there is no prediction."""
        if self.folder is not None:
            for tail in _tails(rel):
                f = (self.folder / tail).with_suffix(".lines.txt")
                if f.is_file():
                    return parse_culane_lines(f.read_text())
            return []
        found = self._find(rel)
        return found[0] if found is not None else []

    def tusimple(self, rel: str, h_samples) -> tuple[list[list[float]], float] | None:
        """(lanes as x lists at `h_samples`, run_time in ms as saved, else 0) of gt image `rel`;
        None without a prediction."""
        if self.folder is None:
            found = self._find(rel)
            if found is None:
                return None
            polys, xs, hs, run_time = found
            if xs is not None and [float(h) for h in hs] == [float(h) for h in h_samples]:
                return xs, run_time
            return [lanes_at_rows(p, h_samples) for p in polys], run_time
        return [lanes_at_rows(p, h_samples) for p in self.polylines(rel)], 0.0


def score(samples: list[LaneSample], protocol: str, pred_of, sizes: list[tuple[int, int]]) -> dict:
    """Metrics of `protocol` for gt `samples`; `pred_of(i, sample)` gives sample i's predicted
    polylines (CULane) or (x lists at the gt h_samples, run_time) (TuSimple)."""
    if protocol == "culane":
        tp = fp = fn = 0
        for i, (s, size) in enumerate(zip(samples, sizes)):
            r = culane_match(s.gt_lanes(), pred_of(i, s), culane_width(size[0]), 0.5, tuple(size))
            tp, fp, fn = tp + r["tp"], fp + r["fp"], fn + r["fn"]
        return culane_scores(tp, fp, fn)
    gts, preds = [], []
    for i, s in enumerate(samples):
        found = pred_of(i, s)
        gts.append({"raw_file": s.rel, "lanes": s.lanes, "h_samples": s.h_samples})
        if found is not None:
            lanes, run_time = found
            preds.append({"raw_file": s.rel, "lanes": lanes, "run_time": run_time})
    return tusimple_evaluate(preds, gts)


def _sizes(samples: list[LaneSample]) -> list[tuple[int, int]]:
    from PIL import Image

    out = []
    for s in samples:
        with Image.open(s.image) as im:
            out.append((im.size[1], im.size[0]))
    return out


def evaluate_predictions(pred: str | Path, data: str | Path, *, split: str = "val",
                         protocol: str | None = None) -> dict:
    """Metrics of saved predictions `pred` against the gt of `data` (no model is run)."""
    dataset = LaneDataset(data, split, input_size=(16, 16), need_labels=False, protocol=protocol)
    preds = Predictions(pred)
    samples = dataset.samples
    if dataset.protocol == "culane":
        result = score(samples, "culane", lambda i, s: preds.polylines(s.rel), _sizes(samples))
    else:
        result = score(samples, "tusimple", lambda i, s: preds.tusimple(s.rel, s.h_samples), [])
    return {"protocol": dataset.protocol, "images": len(samples), "skipped": len(dataset.skipped), **result}


@torch.inference_mode()
def predict_dataset(model, dataset: LaneDataset, rows: str, *, batch_size: int = 4, progress: bool = True,
                    exist_thresh: float = 0.5, prob_thresh: float = 0.3) -> tuple[list[list[Lane]], float]:
    """(lanes of every sample in original-image pixels, model + post-processing ms per image)."""
    model.eval()
    out, seconds = [], 0.0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="eval lanes", disable=not progress, leave=False):
        start = time.perf_counter()
        raw = model(batch["image"])
        sizes = [tuple(s) for s in batch["size"].tolist()]
        out += postprocess(raw, sizes, LANE_ROWS[rows], exist_thresh, prob_thresh,
                           blur_size(batch["image"].shape[-2]))
        seconds += time.perf_counter() - start
    return out, 1000 * seconds / max(len(out), 1)


def evaluate_model(model, data: str | Path, *, split: str = "val", protocol: str | None = None,
                   batch_size: int = 4, progress: bool = True) -> dict:
    """Run `model` (an SCNN) over the `split` of `data` and score it with the dataset's protocol.
    TuSimple's 200 ms rule is not applied to the model's own timing (reported as `ms_per_image`)."""
    dataset = LaneDataset(data, split, input_size=model.input_size, num_lanes=model.num_lanes,
                          need_labels=False, protocol=protocol)
    lanes, ms = predict_dataset(model, dataset, dataset.protocol, batch_size=batch_size, progress=progress)
    samples = dataset.samples
    if dataset.protocol == "culane":
        sizes = _sizes(samples)
        result = score(samples, "culane", lambda i, s: [lane.points for lane in lanes[i]], sizes)
    else:
        result = score(samples, "tusimple",
                       lambda i, s: ([lanes_at_rows(lane.points, s.h_samples) for lane in lanes[i]], 0.0), [])
    return {"protocol": dataset.protocol, "images": len(samples), "skipped": len(dataset.skipped),
            "ms_per_image": ms, **result}


# -- writers of the two formats (from cvkit's predictions.jsonl records) ------------------------

def _lanes_of(record: dict) -> list[Lane]:
    return [Lane(np.asarray(lane["points"], np.float32).reshape(-1, 2), lane["score"], lane["slot"])
            for lane in record["lanes"]]


def _stem(record: dict) -> Path:
    """Where a record's files go, relative to the run folder: the input's relative path, and for
    video frames a folder named after the video with one file per frame."""
    rel = Path(record["source"])
    if record.get("timestamp") is not None:
        return rel.with_suffix("") / f"{record['index']:06d}"
    return rel.with_suffix("")


def write_culane(records: list[dict] | object, out_dir: str | Path) -> int:
    """A `.lines.txt` per record under `out_dir`, mirroring the input paths; returns the count."""
    out_dir, n = Path(out_dir), 0
    for rec in records:
        path = out_dir / _stem(rec).with_suffix(".lines.txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        tmp.write_text(to_culane_text(_lanes_of(rec)))
        tmp.replace(path)
        n += 1
    return n


def write_tusimple(records, path: str | Path, run_time_ms: float = 0.0) -> int:
    """TuSimple json lines (`raw_file` = the input's relative path, `lanes`, `h_samples`,
    `run_time` in ms) for the records; returns the count."""
    path, n = Path(path), 0
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            lanes, h_samples = to_tusimple(_lanes_of(rec), rec["height"])
            raw = _stem(rec).as_posix() + (".jpg" if rec.get("timestamp") is not None else Path(rec["source"]).suffix)
            f.write(json.dumps({"raw_file": raw, "lanes": lanes, "h_samples": h_samples,
                                "run_time": round(run_time_ms, 3)}, separators=(",", ":")) + "\n")
            n += 1
    tmp.replace(path)
    return n


def read_records(jsonl: str | Path):
    """cvkit predictions.jsonl records, one at a time."""
    with open(jsonl, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


__all__ = ["Predictions", "culane_width", "evaluate_model", "evaluate_predictions", "lanes_at_rows",
           "predict_dataset", "read_records", "score", "write_culane", "write_tusimple"]
