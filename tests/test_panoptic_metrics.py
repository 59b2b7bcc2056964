"""COCO panoptic quality: equal to panopticapi on the `pq_coco` fixture, and clear errors on bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
from cvkit.tasks.panoptic.data import make_synthetic
from cvkit.tasks.panoptic.metrics import PanopticQuality, id2rgb, pq_compute, read_panoptic_png, rgb2id
from cvkit.tasks.panoptic.training import evaluate_predictions
from parity import load_fixture
from PIL import Image

from cvkit.errors import CvkitError


def _check(results: dict, ref: dict, tol: float, name: str) -> None:
    for group in ("All", "Things", "Stuff"):
        assert results[group]["n"] == ref[group]["n"], f"{name} {group}: n"
        for k in ("pq", "sq", "rq"):
            assert abs(results[group][k] - ref[group][k]) <= tol, f"{name} {group} {k}: {results[group][k]} != {ref[group][k]}"
    assert {str(c) for c in results["per_class"]} == set(ref["per_class"]), f"{name}: per-class categories"
    for cat, values in results["per_class"].items():
        for k in ("pq", "sq", "rq"):
            assert abs(values[k] - ref["per_class"][str(cat)][k]) <= tol, f"{name} class {cat} {k}"
    counts = {str(c): v for c, v in results["counts"].items()}
    assert set(counts) == set(ref["counts"]), f"{name}: categories with counts"
    for cat, c in ref["counts"].items():
        for k in ("tp", "fp", "fn"):
            assert counts[cat][k] == c[k], f"{name} class {cat} {k}: {counts[cat][k]} != {c[k]}"
        assert abs(counts[cat]["iou_sum"] - c["iou_sum"]) <= tol, f"{name} class {cat} iou_sum"


@pytest.fixture(scope="module")
def pq():
    return load_fixture("metrics", "pq_coco")


def test_rgb_id_encoding_round_trips():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 4001, 16777215]])
    assert np.array_equal(rgb2id(id2rgb(ids)), ids)
    assert rgb2id(np.array([[[1, 2, 3]]], np.uint8))[0, 0] == 1 + 2 * 256 + 3 * 65536


def test_each_case_matches_panopticapi(pq):
    meta, ref, _ = pq
    tol = meta["tolerance"]["pq_sq_rq_abs"]
    for case in meta["cases"]:
        metric = PanopticQuality(meta["categories"])
        metric.update(rgb2id(ref[case["gt_rgb"]].numpy()), case["gt_annotation"]["segments_info"],
                      rgb2id(ref[case["pred_rgb"]].numpy()), case["pred_annotation"]["segments_info"])
        _check(metric.summary(), case["results"], tol, case["name"])


def test_all_images_from_png_files_match_panopticapi(pq, tmp_path):
    meta, ref, _ = pq
    cases = {c["name"]: c for c in meta["cases"]}
    gt_anns, pred_anns = [], []
    for side in ("gt", "pred"):
        (tmp_path / side).mkdir()
    for name in meta["all_images"]["images"]:
        case = cases[name]
        for side, anns in (("gt", gt_anns), ("pred", pred_anns)):
            ann = case[f"{side}_annotation"]
            Image.fromarray(ref[case[f"{side}_rgb"]].numpy(), "RGB").save(tmp_path / side / ann["file_name"])
            anns.append(ann)
    (tmp_path / "gt.json").write_text(json.dumps({"annotations": gt_anns, "categories": meta["categories"]}))
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": pred_anns}))
    results = pq_compute(tmp_path / "gt.json", tmp_path / "pred.json", tmp_path / "gt", tmp_path / "pred")
    _check(results, meta["all_images"]["results"], meta["tolerance"]["pq_sq_rq_abs"], "all_images")


def _exact(meta, ref):
    case = meta["cases"][0]
    return (rgb2id(ref[case["gt_rgb"]].numpy()), case["gt_annotation"]["segments_info"],
            rgb2id(ref[case["pred_rgb"]].numpy()), [dict(s) for s in case["pred_annotation"]["segments_info"]])


def test_inconsistent_predictions_raise_one_clear_error(pq):
    meta, ref, _ = pq
    gt, gt_segs, pred, pred_segs = _exact(meta, ref)
    metric = PanopticQuality(meta["categories"])
    with pytest.raises(CvkitError, match="not in its segments_info"):
        metric.update(gt, gt_segs, pred, pred_segs[1:])
    with pytest.raises(CvkitError, match="not in the prediction PNG"):
        metric.update(gt, gt_segs, pred, pred_segs + [{"id": 999, "category_id": 1}])
    with pytest.raises(CvkitError, match="unknown category 42"):
        metric.update(gt, gt_segs, pred, [{**pred_segs[0], "category_id": 42}] + pred_segs[1:])
    with pytest.raises(CvkitError, match="prediction is 63x48"):
        metric.update(gt, gt_segs, pred[:, :63], pred_segs)


def test_group_without_segments_reports_zero(pq):
    meta, ref, _ = pq
    gt, gt_segs, pred, pred_segs = _exact(meta, ref)
    things = [c for c in meta["categories"] if c["isthing"]]
    keep = {c["id"] for c in things}
    gt = np.where(np.isin(gt, [s["id"] for s in gt_segs if s["category_id"] in keep]), gt, 0)
    pred = np.where(np.isin(pred, [s["id"] for s in pred_segs if s["category_id"] in keep]), pred, 0)
    metric = PanopticQuality(meta["categories"])
    metric.update(gt, [s for s in gt_segs if s["category_id"] in keep], pred,
                  [s for s in pred_segs if s["category_id"] in keep])
    results = metric.summary()
    assert results["Stuff"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    assert results["Things"]["pq"] == 1.0 and results["All"]["n"] == 2


def test_png_reader_gives_ids_and_refuses_other_than_8_bit_rgb(tmp_path):
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 4001, 16777215]])
    Image.fromarray(id2rgb(ids), "RGB").save(tmp_path / "rgb.png")
    assert np.array_equal(read_panoptic_png(tmp_path / "rgb.png"), ids)
    Image.fromarray(id2rgb(ids)[..., 0], "L").save(tmp_path / "gray.png")
    with pytest.raises(CvkitError, match="8-bit RGB .* has 1 channel"):
        read_panoptic_png(tmp_path / "gray.png")
    with pytest.raises(CvkitError, match="cannot read"):
        read_panoptic_png(tmp_path / "missing.png")


def test_unreadable_prediction_png_stops_the_evaluation_with_its_name(tmp_path):
    for name in ("gt", "pred"):
        make_synthetic(tmp_path / name, 3, size=32, seed=1)
    bad = tmp_path / "pred" / "panoptic" / "000001.png"
    Image.fromarray(np.zeros((32, 32), np.uint8), "L").save(bad)
    assert evaluate_predictions(tmp_path / "gt", tmp_path / "gt")["All"]["pq"] == 1.0
    with pytest.raises(CvkitError, match=f"{bad}: panoptic PNGs are 8-bit RGB"):
        evaluate_predictions(tmp_path / "pred", tmp_path / "gt")
