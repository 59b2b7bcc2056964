"""The lanes Task: SCNN on any backbone through the media pipeline.

Frames are resized to the model's input size and ImageNet-normalised; lanes come back as
polylines in original-image pixels with their existence scores (`postprocess.py`), sampled at
CULane's rows or, for TuSimple output, at TuSimple's. With `smooth`, each lane slot's x positions
are averaged over consecutive frames of one video (an exponential moving average, reset when the
slot disappears or the source changes).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from cvkit.engine.task import TASKS, Task
from cvkit.errors import CvkitError, UsageError
from cvkit.nn import deploy
from cvkit.presets import preset_weights
from cvkit.weights import load_weights

from .data import normalise
from .postprocess import LANE_ROWS, Lane, postprocess
from .scnn import SCNN, build_scnn

FORMATS = ("culane", "tusimple")
PALETTE = [(255, 64, 64), (64, 220, 64), (64, 150, 255), (255, 200, 0), (230, 80, 255), (0, 220, 220),
           (255, 140, 40), (170, 255, 90)]
"""RGB colour of lane slot k (k modulo the palette)."""
MODEL_ARGS = ("input_size", "num_lanes", "channels", "hidden")


@dataclass
class LanesResult:
    """Lanes of one frame: `lanes` (polylines in image pixels, bottom first, with scores and
    slots), `exist` the existence probability of every slot, `size` the image (H, W)."""

    lanes: list[Lane]
    exist: np.ndarray
    size: tuple[int, int]


def build_model(preset: dict) -> SCNN:
    """The SCNN a lanes preset describes (`backbone`, args `input_size` (W, H), `num_lanes`,
    `channels`, `hidden`)."""
    if preset["model"] != "scnn":
        raise UsageError(f"preset '{preset['name']}': the lanes task has the model 'scnn', not '{preset['model']}'")
    args = dict(preset.get("args") or {})
    unknown = sorted(set(args) - set(MODEL_ARGS))
    if unknown:
        raise UsageError(f"preset '{preset['name']}': unknown args {unknown}; valid: {', '.join(MODEL_ARGS)}")
    if "input_size" in args:
        args["input_size"] = tuple(args["input_size"])
    return build_scnn(preset.get("backbone") or "vgg16_bn_scnn", **args)


def weights_meta(path: str) -> dict:
    """cvkit's training metadata in a `.safetensors` header ({} when absent or unreadable)."""
    if not str(path).endswith(".safetensors") or not Path(path).is_file():
        return {}
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get("cvkit")
    except Exception:  # noqa: BLE001 - unreadable files are reported by load_weights
        return {}
    return json.loads(raw) if raw else {}


def load_model_weights(model: SCNN, preset: dict, weights: str | None = None) -> SCNN:
    """Load `weights` (path/URL; None = the preset's own, 'none' = random init) through the
    preset's converter (`scnn` maps the SCNN_Pytorch port's layout and leaves cvkit's as is).
    A cvkit file trained for another input size or backbone is refused in one line."""
    location, sha = preset_weights(preset)
    if weights is not None:
        location, sha = weights, None
    if location is None or str(location).lower() == "none":
        return load_weights(model, "none")
    meta = weights_meta(location)
    for key, want in (("input_size", list(model.input_size)), ("num_lanes", model.num_lanes)):
        if key in meta and meta[key] != want:
            raise CvkitError(f"{location} was trained with {key} {meta[key]}, but the model has {want}")
    converter = (preset.get("weights") or {}).get("converter")
    return load_weights(model, location, converter=converter, sha256=sha)


def blur_size(input_height: int) -> int:
    """The box blur of the post-processing for a model input `input_height` px high: the
    official 9 at the 288-px inputs of CULane and TuSimple, scaled and kept odd (5 at 144 px), so
    that lanes on small inputs are not blurred below the probability threshold."""
    k = max(1, round(9 * input_height / 288))
    return k + (k % 2 == 0)


class LaneSmoother:
    """Per-slot exponential moving average of lane x positions over the frames of one source;
    `alpha` is the weight of the newest frame."""

    def __init__(self, alpha: float = 0.5):
        self.alpha = alpha
        self.source, self.state = None, {}

    def __call__(self, source: str, lanes: list[Lane]) -> list[Lane]:
        if source != self.source:
            self.source, self.state = source, {}
        state, out = {}, []
        for lane in lanes:
            prev = self.state.get(lane.slot, {})
            pts = lane.points.copy()
            for p in pts:
                old = prev.get(float(p[1]))
                if old is not None:
                    p[0] = self.alpha * p[0] + (1 - self.alpha) * old
            state[lane.slot] = {float(y): float(x) for x, y in pts}
            out.append(Lane(pts, lane.score, lane.slot))
        self.state = state
        return out


@TASKS.register("lanes")
class LanesTask(Task):
    """Lane detection: frames in, `LanesResult`s out.

    `rows`: "culane" (18 rows every 20 px of a 590-px image, scaled) or "tusimple" (56 rows every
    10 px of a 720-px image, scaled; what `--format tusimple` uses); default the preset's
    `eval.rows`, else culane. `smooth`: average lanes over video frames (off by default).
    """

    name = "lanes"

    def __init__(self, model: SCNN, preset: dict | None = None, *, rows: str | None = None,
                 smooth: bool = False, exist_thresh: float = 0.5, prob_thresh: float = 0.3):
        super().__init__(model, preset)
        rows = rows or (self.preset.get("eval") or {}).get("rows", "culane")
        if rows not in LANE_ROWS:
            raise UsageError(f"rows must be one of {', '.join(LANE_ROWS)}, not '{rows}'")
        if not (0 <= exist_thresh < 1 and 0 <= prob_thresh < 1):
            raise UsageError("--exist-thresh and --prob-thresh must be in [0, 1)")
        self.rows = LANE_ROWS[rows]
        self.input_size = tuple(model.input_size)
        self.exist_thresh, self.prob_thresh = exist_thresh, prob_thresh
        self.blur = blur_size(self.input_size[1])
        self.smoother = LaneSmoother() if smooth else None

    @classmethod
    def from_preset(cls, preset: dict, weights: str | None = None, *, format: str | None = None,
                    smooth: bool = False, exist_thresh: float = 0.5, prob_thresh: float = 0.3) -> LanesTask:
        if format is not None and format not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not '{format}'")
        model = load_model_weights(build_model(preset), preset, weights)
        return cls(deploy(model), preset, rows=format, smooth=smooth, exist_thresh=exist_thresh,
                   prob_thresh=prob_thresh)

    # -- inference --------------------------------------------------------------------------
    def preprocess(self, frames: Sequence) -> tuple[torch.Tensor, list[dict]]:
        batch = torch.stack([normalise(f.image, self.input_size) for f in frames])
        return batch, [{"size": f.image.shape[:2], "source": f.source} for f in frames]

    def postprocess(self, raw: dict, metas: list[dict]) -> list[LanesResult]:
        sizes = [m["size"] for m in metas]
        lanes = postprocess(raw, sizes, self.rows, self.exist_thresh, self.prob_thresh, self.blur)
        exist = raw["exist_pred"].detach().float().cpu().numpy()
        results = []
        for found, e, meta in zip(lanes, exist, metas):
            if self.smoother is not None:
                found = self.smoother(meta["source"], found)
            results.append(LanesResult(found, e, tuple(meta["size"])))
        return results

    # -- output ------------------------------------------------------------------------------
    def render(self, frame, result: LanesResult) -> np.ndarray:
        return draw_lanes(frame.image, result.lanes)

    def serialise(self, result: LanesResult) -> dict[str, Any]:
        return {"height": int(result.size[0]), "width": int(result.size[1]),
                "exist": [round(float(e), 4) for e in result.exist],
                "lanes": [{"slot": lane.slot, "score": round(lane.score, 4),
                           "points": [[float(x), float(y)] for x, y in lane.points]} for lane in result.lanes]}


def draw_lanes(image: np.ndarray, lanes: list[Lane]) -> np.ndarray:
    """A copy of `image` (RGB) with each lane drawn in its slot's colour: the polyline, its points
    and its score at the bottom end."""
    out = image.copy()
    h = image.shape[0]
    thick = max(2, round(h / 150))
    for lane in lanes:
        colour = PALETTE[lane.slot % len(PALETTE)]
        pts = np.round(lane.points).astype(np.int32)
        cv2.polylines(out, [pts], False, colour, thick, cv2.LINE_AA)
        for x, y in pts:
            cv2.circle(out, (int(x), int(y)), thick + 1, colour, -1, cv2.LINE_AA)
        x, y = pts[0]
        scale = max(0.35, h / 900)
        cv2.putText(out, f"{lane.slot + 1}:{lane.score:.2f}", (int(x) + 4, int(y) - 4), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, colour, max(1, round(scale * 2)), cv2.LINE_AA)
    return out


__all__ = ["FORMATS", "LaneSmoother", "LanesResult", "LanesTask", "blur_size", "build_model", "draw_lanes",
           "load_model_weights", "weights_meta"]
