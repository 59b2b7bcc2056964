"""Lane metrics against the official CULane (C++) and TuSimple (Python) evaluators' numbers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from cvkit.tasks.lanes.metrics import (
    culane_evaluate,
    culane_match,
    culane_scores,
    lane_mask,
    max_weight_matching,
    parse_culane_lines,
    tusimple_bench,
    tusimple_evaluate,
    tusimple_line_accuracy,
    tusimple_threshold,
)
from parity import FIXTURES

from cvkit.errors import CvkitError


def _fixture(stem: str) -> dict:
    """The metric fixture, or no cases (the tests then skip) when ../shared is absent."""
    path = FIXTURES / "metrics" / f"{stem}.json"
    return json.loads(path.read_text()) if path.is_file() else {"cases": []}


CULANE = _fixture("lanes_culane")
TUSIMPLE = _fixture("lanes_tusimple")


def _assert_scores(got: dict, want: dict, name: str) -> None:
    for key in ("tp", "fp", "fn"):
        assert got[key] == want[key], f"{name}: {key} {got[key]} != {want[key]}"
    for key in ("precision", "recall", "F"):
        if want[key] is None:  # 0/0, printed -nan
            assert math.isnan(got[key]), f"{name}: {key} {got[key]} is not NaN"
        else:
            assert abs(got[key] - want[key]) <= 1e-12, f"{name}: {key} {got[key]} != {want[key]}"


@pytest.mark.parametrize("case", CULANE["cases"], ids=lambda c: c["name"])
def test_culane_case_matches_official_evaluator(case):
    gt, pred = parse_culane_lines(case["gt_lines_txt"]), parse_culane_lines(case["pred_lines_txt"])
    r = culane_match(gt, pred, width=30, iou_thresh=0.5)
    want = np.array(case["pairwise_iou_gt_x_pred"], dtype=np.float64).reshape(len(gt), len(pred))
    assert r["ious"].shape == want.shape
    if want.size:
        worst = np.abs(r["ious"] - want).max()
        assert worst <= 1e-12, f"{case['name']}: pairwise IoU off by {worst}"
    assert r["gt_to_pred"].tolist() == case["hungarian_gt_to_pred"]
    _assert_scores(culane_scores(r["tp"], r["fp"], r["fn"]), case["result"], case["name"])


def test_culane_totals_over_all_cases_match_official_evaluator():
    if not CULANE["cases"]:
        pytest.skip("fixture not present")
    by_name = {c["name"]: c for c in CULANE["cases"]}
    images = [(parse_culane_lines(by_name[n]["gt_lines_txt"]), parse_culane_lines(by_name[n]["pred_lines_txt"]))
              for n in CULANE["all_cases"]["images"]]
    _assert_scores(culane_evaluate(images), CULANE["all_cases"]["result"], "all cases")


def test_culane_parsing_counts_blank_and_short_lines_as_lanes():
    lanes = parse_culane_lines("1 2 3 4 \n\n5 6\n7 8 9\n")
    assert [len(lane) for lane in lanes] == [2, 0, 1, 1]
    assert parse_culane_lines(None) == [] and parse_culane_lines("") == []


def test_culane_duplicate_points_are_dropped_before_drawing():
    pts = np.array([[300, 590], [350, 500], [350, 500], [400, 400]], dtype=np.float64)
    assert np.array_equal(lane_mask(pts), lane_mask(pts[[0, 1, 3]]))


def test_max_weight_matching_maximises_the_sum_not_the_count():
    # greedy on the largest entry (0.9) would give 0.9 + 0.0; the best sum is 0.6 + 0.6
    w = np.array([[0.9, 0.6], [0.6, 0.0]])
    assert max_weight_matching(w).tolist() == [1, 0]
    assert max_weight_matching(w[:, :1]).tolist() == [0, -1]
    assert max_weight_matching(np.zeros((2, 0))).tolist() == [-1, -1]


@pytest.mark.parametrize("case", TUSIMPLE["cases"], ids=lambda c: c["name"])
def test_tusimple_case_matches_official_evaluator(case):
    gt, pred = case["gt_json_line"], case["pred_json_line"]
    thresholds = [tusimple_threshold(lane, gt["h_samples"]) for lane in gt["lanes"]]
    assert np.allclose(thresholds, case["per_gt_threshold_px"], rtol=0, atol=1e-12)
    accs = [[tusimple_line_accuracy(p, g, t) for p in pred["lanes"]] for g, t in zip(gt["lanes"], thresholds)]
    assert np.allclose(np.array(accs).reshape(len(gt["lanes"]), -1),
                       np.array(case["line_accuracy_gt_x_pred"]).reshape(len(gt["lanes"]), -1), rtol=0, atol=1e-12)
    got = tusimple_bench(pred["lanes"], gt["lanes"], gt["h_samples"], pred["run_time"])
    want = case["bench"]
    assert np.allclose(got, (want["accuracy"], want["fp"], want["fn"]), rtol=0, atol=1e-12), case["name"]
    one = tusimple_evaluate([pred], [gt])
    assert np.allclose([one[e["name"]] for e in case["bench_one_submit"]],
                       [e["value"] for e in case["bench_one_submit"]], rtol=0, atol=1e-12)


def test_tusimple_all_cases_in_one_file_match_bench_one_submit():
    if not TUSIMPLE["cases"]:
        pytest.skip("fixture not present")
    got = tusimple_evaluate([c["pred_json_line"] for c in TUSIMPLE["cases"]],
                            [c["gt_json_line"] for c in TUSIMPLE["cases"]])
    for entry in TUSIMPLE["all_cases"]["bench_one_submit"]:
        assert abs(got[entry["name"]] - entry["value"]) <= 1e-12, entry["name"]


def test_tusimple_rejects_lanes_of_the_wrong_length_and_missing_predictions():
    h = list(range(160, 720, 10))
    gt = {"raw_file": "a.jpg", "lanes": [[100] * len(h)], "h_samples": h}
    with pytest.raises(CvkitError, match="one per h_sample"):
        tusimple_bench([[100] * 3], gt["lanes"], h)
    with pytest.raises(CvkitError, match="1 missing"):
        tusimple_evaluate([], [gt])
