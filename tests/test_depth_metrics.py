"""FastDepth's depth metrics against the depth_fastdepth fixture (fast-depth metrics.py, run unmodified)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cvkit.tasks.depth.metrics import DepthMeter, evaluate_depth
from parity import load_fixture

from cvkit.errors import CvkitError


@pytest.fixture(scope="module")
def fx():
    """(stored tensors, {case name: case}, assert_metrics) of the depth_fastdepth fixture."""
    meta, ref, _ = load_fixture("metrics", "depth_fastdepth")
    tol = meta["tolerance"]

    def assert_metrics(got: dict, want: dict, name: str) -> None:
        for key, expected in want.items():
            if expected == "inf":
                assert got[key] == math.inf, f"{name}.{key}: {got[key]} is not inf"
            else:
                assert got[key] == pytest.approx(expected, rel=tol["rtol"], abs=tol["atol"]), f"{name}.{key}"

    return ref, {c["name"]: c for c in meta["cases"]}, assert_metrics


@pytest.mark.parametrize("case", ["dense", "target_zero_output_zero", "target_zero_output_positive",
                                  "output_zero_target_positive"])
def test_single_image_metrics_match_fastdepth_incl_its_or_mask(fx, case):
    ref, cases, assert_metrics = fx
    output, target = ref[f"{case}.output.0"], ref[f"{case}.target.0"]
    assert_metrics(evaluate_depth(output, target), cases[case]["results"]["evaluate"], case)


def test_target_positive_only_rows_give_the_sparse_to_dense_numbers(fx):
    ref, cases, assert_metrics = fx
    output, target = ref["target_zero_output_positive.output.0"], ref["target_zero_output_positive.target.0"]
    rows = (target > 0).all(dim=-1).flatten()
    assert not rows[:3].any() and rows[3:].all()  # the top 3 rows have no ground truth
    assert_metrics(evaluate_depth(output[..., 3:, :], target[..., 3:, :]),
                   cases["target_zero_output_positive"]["results"]["evaluate_on_target_positive_only"], "rows")


def test_dataset_value_is_the_batch_size_weighted_mean_of_per_image_metrics(fx):
    ref, cases, assert_metrics = fx
    results = cases["average_meter"]["results"]
    outputs = [ref[f"average_meter.output.{i}"] for i in range(3)]
    targets = [ref[f"average_meter.target.{i}"] for i in range(3)]
    meter = DepthMeter()
    for i, (o, t) in enumerate(zip(outputs, targets)):
        assert_metrics(meter.update(o, t), results["per_image"][i], f"per_image.{i}")
    assert_metrics(meter.compute(), results["average_meter"], "average_meter")
    assert_metrics(evaluate_depth(torch.cat(outputs), torch.cat(targets)), results["single_batch"], "single_batch")


def test_nyu_full_map_and_opt_in_eigen_crop_match_fastdepth(fx):
    ref, cases, assert_metrics = fx

    def metres(name):
        mm = ref[f"nyu_eigen_crop.{name}"].numpy()
        return torch.from_numpy(np.kron(mm, np.ones((8, 8), mm.dtype)).astype(np.float32) / 1000)[None, None]

    pred, gt = metres("pred_mm_block8"), metres("gt_mm_block8")
    results = cases["nyu_eigen_crop"]["results"]
    assert_metrics(evaluate_depth(pred, gt), results["fastdepth_full"], "full")
    assert_metrics(evaluate_depth(pred, gt, eigen_crop=True), results["fastdepth_eigen_crop"], "eigen_crop")


def test_bad_depth_inputs_give_one_clear_error():
    with pytest.raises(CvkitError, match="differ in shape"):
        evaluate_depth(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 5))
    with pytest.raises(CvkitError, match="no valid depth pixel"):
        evaluate_depth(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(CvkitError, match="480x640"):
        evaluate_depth(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4), eigen_crop=True)
    with pytest.raises(CvkitError, match="no depth maps"):
        DepthMeter().compute()
