"""Lane post-processing: probability maps to lanes at the CULane / TuSimple sample rows."""
from __future__ import annotations

import numpy as np
import torch
from cvkit.tasks.lanes.metrics import parse_culane_lines
from cvkit.tasks.lanes.postprocess import (
    CULANE_ROWS,
    TUSIMPLE_ROWS,
    lanes_from_probs,
    postprocess,
    to_culane_text,
    to_tusimple,
)


def _probs(h: int = 288, w: int = 800, lanes=((0, 200),), top: int = 0) -> np.ndarray:
    """Probability maps with, per (slot, column), a vertical ridge from row `top` down: 1 at the
    column, falling off linearly over 8 px each side (after the 9x9 blur the peak stays put)."""
    p = np.zeros((5, h, w), np.float32)
    ridge = 1 - np.abs(np.arange(-8, 9)) / 9
    for slot, col in lanes:
        p[slot + 1, top:, col - 8:col + 9] = ridge
    p[0] = 1 - p[1:].sum(0)
    return p


def test_sample_rows_are_the_official_ones():
    assert CULANE_ROWS.ys(590) == [589 - 20 * k for k in range(18)]
    assert TUSIMPLE_ROWS.ys(720) == [710 - 10 * k for k in range(56)]
    assert CULANE_ROWS.map_row(589, 288, 590) == 287 and CULANE_ROWS.map_row(249, 288, 590) == 121
    assert TUSIMPLE_ROWS.map_row(710, 288, 720) == 284 and TUSIMPLE_ROWS.map_row(160, 288, 720) == 64


def test_culane_lane_points_are_in_original_pixels_bottom_first():
    lanes = lanes_from_probs(_probs(lanes=((1, 200),)), np.array([0.1, 0.9, 0.2, 0.3]), (590, 1640))
    assert len(lanes) == 1 and lanes[0].slot == 1 and abs(lanes[0].score - 0.9) < 1e-9
    pts = lanes[0].points
    assert pts[:, 1].tolist() == [589 - 20 * k for k in range(18)]
    assert set(pts[:, 0].tolist()) == {int(200 / 800 * 1640)}


def test_low_existence_low_probability_and_short_lanes_are_dropped():
    exist = np.array([0.5, 0.9, 0.9, 0.9])  # slot 0 at 0.5: not above the threshold
    probs = _probs(lanes=((0, 100), (1, 300), (2, 500)), top=270)
    probs[3] *= 0.3  # slot 2 never reaches probability 0.3
    lanes = lanes_from_probs(probs, exist, (590, 1640))
    assert [lane.slot for lane in lanes] == [1]
    assert lanes[0].points[:, 1].tolist() == [589, 569]  # map rows 287, 277 (267 is above the ridge)
    assert lanes_from_probs(_probs(top=280), np.ones(4), (590, 1640)) == []  # one point only


def test_tusimple_rows_and_format():
    (lane,) = lanes_from_probs(_probs(h=288, w=512, lanes=((0, 256),), top=144), np.ones(4) * 0.9,
                               (720, 1280), TUSIMPLE_ROWS)
    xs, h_samples = to_tusimple([lane])
    assert h_samples == list(range(160, 720, 10))
    assert xs[0][-1] == 640 and xs[0][0] == -2 and xs[0].count(640) == len(lane.points)


def test_batch_postprocess_softmaxes_logits_and_culane_text_round_trips():
    logits = torch.from_numpy(_probs(lanes=((3, 600),))).unsqueeze(0) * 10
    out = {"seg_pred": logits.repeat(2, 1, 1, 1), "exist_pred": torch.tensor([[0.1, 0.1, 0.1, 0.8]] * 2)}
    batch = postprocess(out, [(590, 1640), (295, 820)])
    assert [[lane.slot for lane in lanes] for lanes in batch] == [[3], [3]]
    assert batch[1][0].points[0].tolist() == [int(600 / 800 * 820), 294]
    (parsed,) = parse_culane_lines(to_culane_text(batch[0]))
    assert np.array_equal(parsed, batch[0][0].points)
