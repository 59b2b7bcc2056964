"""mIoU / mAcc / aAcc against mmsegmentation 1.2.2's IoUMetric (fixture metrics/miou_mmseg)."""
from __future__ import annotations

import numpy as np
import pytest
from cvkit.tasks.segment.metrics import IoUMetric, reduce_zero_label
from parity import load_fixture

from cvkit.errors import CvkitError


def _runs():
    """(case, results) for every stored run of every case (plain, nan_to_num=0, ...)."""
    meta, ref, _ = load_fixture("metrics", "miou_mmseg")
    return [pytest.param(case, case[key], ref, id=f"{case['name']}-{key}")
            for case in meta["cases"] for key in case if key.startswith("results")]


def _nan(values):
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


@pytest.mark.parametrize("case, results, ref", _runs())
def test_iou_metric_matches_mmseg(case, results, ref):
    kwargs = results.get("call_kwargs", case["call_kwargs"])
    metric = IoUMetric(case["num_classes"], kwargs["ignore_index"], kwargs.get("nan_to_num"))
    for i, (pred, gt, *raw) in enumerate(case["images"]):
        if raw:  # reduce_zero_label cases: the label map as mmseg's loader returns it
            np.testing.assert_array_equal(reduce_zero_label(ref[raw[0]].numpy()), ref[gt].numpy())
        one = IoUMetric(case["num_classes"], kwargs["ignore_index"])
        one.update(ref[pred].long(), ref[gt].long())
        np.testing.assert_array_equal(one.areas()["intersect"], results["per_image_area_intersect"][i])
        np.testing.assert_array_equal(one.areas()["union"], results["per_image_area_union"][i])
        metric.update(ref[pred].long(), ref[gt].long())

    areas = metric.areas()
    for name, key in (("intersect", "intersect"), ("union", "union"), ("pred", "pred_label"),
                      ("label", "label")):
        np.testing.assert_array_equal(areas[name], results[f"total_area_{key}"], err_msg=name)
    per_class = metric.per_class()
    for name in ("IoU", "Acc"):
        np.testing.assert_allclose(per_class[name], _nan(results[f"{name}_per_class"]), rtol=1e-6,
                                   err_msg=f"{name}_per_class")
    np.testing.assert_allclose(areas["intersect"].sum() / areas["label"].sum(), results["aAcc_raw"], rtol=1e-6)
    summary = metric.summary()
    for name in ("aAcc", "mIoU", "mAcc"):
        assert summary[name] == pytest.approx(results["summary"][name], abs=0.01), name


def test_out_of_range_values_drop_from_their_own_histogram_only():
    # pixels: both 0 | label 5 (out of range) under pred 1 | label 1 under pred 7 (out of range) | ignored
    metric = IoUMetric(3)
    metric.update(np.array([[0, 1, 7, 2]], np.uint8), np.array([[0, 5, 1, 255]], np.uint8))
    areas = metric.areas()
    np.testing.assert_array_equal(areas["intersect"], [1, 0, 0])
    np.testing.assert_array_equal(areas["pred"], [1, 1, 0])
    np.testing.assert_array_equal(areas["label"], [1, 1, 0])
    np.testing.assert_allclose(metric.per_class()["IoU"], [1, 0, np.nan])
    assert metric.summary() == {"aAcc": 50.0, "mIoU": 50.0, "mAcc": 50.0}


def test_reduce_zero_label_maps_zero_and_255_to_ignore():
    raw = np.array([0, 1, 2, 150, 254, 255], np.uint8)
    np.testing.assert_array_equal(reduce_zero_label(raw), [255, 0, 1, 149, 253, 255])


def test_update_refuses_prediction_and_label_of_different_sizes():
    with pytest.raises(CvkitError, match="differ in size"):
        IoUMetric(3).update(np.zeros((4, 5)), np.zeros((4, 6)))


def test_reset_clears_the_accumulated_areas():
    metric = IoUMetric(2)
    metric.update(np.ones((2, 2)), np.ones((2, 2)))
    metric.reset()
    assert metric.areas()["label"].sum() == 0
