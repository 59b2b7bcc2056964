"""From SCNN's outputs to lanes, as the official tools do it (the SCNN_Pytorch port's
`utils/prob2lines/getLane.py`, which follows the official MATLAB / Lua tool).

Per image: softmax over the 1 + L classes; for each lane slot whose existence probability is
above 0.5, blur its probability map with a 9x9 box filter (border replicated) and walk the
dataset's sample rows from the bottom up, taking the argmax column of each row where its
probability is above 0.3. Columns scale to the original width by truncation (`int(col / w * W)`);
a point in column 0 counts as missing, as in the official tools. Lanes with fewer than two points
are dropped. Results are `Lane`s: a polyline in original-image pixels and the existence score.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass(frozen=True)
class LaneRows:
    """The rows a dataset samples lanes at: `count` rows `gap` pixels apart in an image
    `ref_height` high (the gap scales with other heights), the first `bottom` pixels above the
    bottom edge."""

    name: str
    ref_height: int
    gap: int
    count: int
    bottom: int

    def ys(self, height: int) -> list[float]:
        """The sample rows in an image `height` high, bottom first."""
        return [height - self.bottom - k * self.gap * height / self.ref_height for k in range(self.count)]

    def map_row(self, y: float, h: int, height: int) -> int:
        """The row of an `h`-high probability map read for image row `y` (each tool's own formula:
        CULane `int(h - k*gap/H*h - 1)`, TuSimple `int(y*h/H)`)."""
        if self.name == "culane":
            return int(h - (height - 1 - y) / height * h - 1)
        return int(y * h / height)


CULANE_ROWS = LaneRows("culane", ref_height=590, gap=20, count=18, bottom=1)
"""y = 589, 569, ..., 249 in a 590-high CULane image."""
TUSIMPLE_ROWS = LaneRows("tusimple", ref_height=720, gap=10, count=56, bottom=10)
"""y = 710, 700, ..., 160 in a 720-high TuSimple image (its `h_samples`, reversed)."""
LANE_ROWS = {"culane": CULANE_ROWS, "tusimple": TUSIMPLE_ROWS}


@dataclass
class Lane:
    """A detected lane: `points` (n, 2) float32 (x, y) in original-image pixels, bottom first;
    `score` its existence probability; `slot` its lane class minus one (0 .. num_lanes - 1)."""

    points: np.ndarray
    score: float
    slot: int


def lanes_from_probs(probs: np.ndarray, exist: np.ndarray, image_size: tuple[int, int],
                     rows: LaneRows = CULANE_ROWS, exist_thresh: float = 0.5,
                     prob_thresh: float = 0.3, blur: int = 9) -> list[Lane]:
    """Lanes of one image from its softmaxed segmentation `probs` (1 + L, h, w; channel 0 is the
    background) and existence probabilities `exist` (L,); `image_size` = (H, W) of the original
    image."""
    height, width = image_size
    _, h, w = probs.shape
    ys = rows.ys(height)
    lanes = []
    for slot, score in enumerate(np.asarray(exist, dtype=np.float64)):
        if not score > exist_thresh:
            continue
        prob = cv2.blur(np.ascontiguousarray(probs[slot + 1], dtype=np.float32), (blur, blur),
                        borderType=cv2.BORDER_REPLICATE)
        points = []
        for y in ys:
            r = rows.map_row(y, h, height)
            if r < 0:
                break
            col = int(np.argmax(prob[r]))
            if prob[r, col] > prob_thresh:
                x = int(col / w * width)
                if x > 0:
                    points.append((x, y))
        if len(points) >= 2:
            lanes.append(Lane(np.asarray(points, dtype=np.float32), float(score), slot))
    return lanes


@torch.no_grad()
def postprocess(outputs: dict[str, torch.Tensor], image_sizes: list[tuple[int, int]],
                rows: LaneRows = CULANE_ROWS, exist_thresh: float = 0.5,
                prob_thresh: float = 0.3, blur: int = 9) -> list[list[Lane]]:
    """Lanes for each image of a batch from SCNN's outputs (`seg_pred` logits at the model input
    size, `exist_pred`); `image_sizes` = the (H, W) of each original image."""
    probs = outputs["seg_pred"].float().softmax(1).cpu().numpy()
    exist = outputs["exist_pred"].float().cpu().numpy()
    return [lanes_from_probs(p, e, size, rows, exist_thresh, prob_thresh, blur)
            for p, e, size in zip(probs, exist, image_sizes)]


def to_culane_text(lanes: list[Lane]) -> str:
    """The `.lines.txt` contents: one lane a line, `x y` pairs separated by spaces."""
    return "".join(" ".join(f"{x:g} {y:g}" for x, y in lane.points) + " \n" for lane in lanes)


def to_tusimple(lanes: list[Lane], height: int = 720) -> tuple[list[list[float]], list[float]]:
    """(lanes, h_samples) in the TuSimple JSON format: h_samples ascending (160 ... 710 for a
    720-high image), one x per h_sample per lane, -2 where the lane has no point."""
    h_samples = [_plain(y) for y in TUSIMPLE_ROWS.ys(height)[::-1]]
    out = []
    for lane in lanes:
        xs = {float(y): _plain(x) for x, y in lane.points}
        out.append([xs.get(float(np.float32(y)), -2) for y in h_samples])
    return out, h_samples


def _plain(v) -> int | float:
    """A JSON-friendly number: int when integral."""
    v = float(v)
    return int(v) if v.is_integer() else v
