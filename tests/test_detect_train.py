"""Learning proof for detection: `cvkit train detect` on a tiny synthetic shapes set, then
`cvkit eval detect` (pycocotools) shows mAP far above the untrained model; plus the COCO metric
itself and the dataset tensors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from cvkit.tasks.detect.build import build_from_preset
from cvkit.tasks.detect.data import load_dataset
from cvkit.tasks.detect.synthetic import make_shapes_dataset
from cvkit.tasks.detect.task import DetectTask
from cvkit.tasks.detect.training import (
    DetectionDataset,
    coco_ground_truth,
    coco_map,
    evaluate_coco,
    image_ap50,
)
from parity import ONE_THREAD
from test_foundation import cli

from cvkit.presets import load_preset

TINY = """name: tiny_shapes
task: detect
model: detector
backbone: resnet18
neck: fpn
head: retinanet
args:
  backbone_kwargs: {out_indices: [1, 2], depths: [1, 1, 1]}
  neck_kwargs: {out_channels: 32, num_outs: 3}
  head_kwargs: {feat_channels: 32, stacked_convs: 1, octave_base_scale: 2}
imgsz: 64
classes: [rectangle, ellipse, triangle]
"""



pytestmark = pytest.mark.usefixtures("one_thread")


def test_training_on_shapes_lifts_map_far_above_the_untrained_model(tmp_path):
    make_shapes_dataset(tmp_path / "data", 8, size=64, max_objects=2, seed=0)
    (tmp_path / "tiny.yaml").write_text(TINY)
    res = cli(
        "train",
        "detect",
        "--data",
        str(tmp_path / "data"),
        "--preset",
        str(tmp_path / "tiny.yaml"),
        "--epochs",
        "100",
        "--batch-size",
        "8",
        "--lr",
        "0.003",
        "--augment",
        "none",
        "--project",
        str(tmp_path / "runs"),
        env=ONE_THREAD,
    )
    assert res.returncode == 0, res.stderr
    weights = re.search(r"weights: (\S+)", res.stdout).group(1)
    trained = cli(
        "eval",
        "detect",
        "--data",
        str(tmp_path / "data"),
        "--weights",
        weights,
        "--out",
        str(tmp_path / "eval"),
        env=ONE_THREAD,
    )
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "eval" / "pr_curve.png").stat().st_size > 1000
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(metrics)
    # the weights file carries the model and class names: --weights alone rebuilds it
    task = DetectTask.from_preset(load_preset("retinanet_shapes"), weights=weights)
    assert task.names == ["rectangle", "ellipse", "triangle"]
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="randomly initialised"):
        untrained = DetectTask.from_preset(load_preset(str(tmp_path / "tiny.yaml")), weights="none")
    before = evaluate_coco(untrained, load_dataset(tmp_path / "data"), progress=False)["AP50"]
    assert metrics["AP50"] > 0.4 and metrics["AP50"] > before + 0.3, (metrics, before)


def test_coco_map_is_one_for_perfect_detections_and_zero_for_none(tmp_path):
    make_shapes_dataset(tmp_path, 4, size=64, seed=3)
    ds = load_dataset(tmp_path)
    gt = coco_ground_truth(ds)
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
    ]
    assert coco_map(gt, perfect)[0]["AP"] == pytest.approx(1.0)
    assert coco_map(gt, [])[0]["AP50"] == 0.0


def test_image_ap50_counts_class_and_iou():
    gt_boxes, gt_labels = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([0, 1])
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    assert image_ap50(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), gt_boxes, gt_labels) == 1.0
    assert image_ap50(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 0]), gt_boxes, gt_labels) == 0.5


def test_training_samples_are_fixed_size_with_padded_targets(tmp_path):
    make_shapes_dataset(tmp_path, 3, size=(80, 100), seed=4)
    ds = load_dataset(tmp_path)
    _, recipe, _, _ = build_from_preset(load_preset("retinanet_shapes"))
    data = DetectionDataset(ds, recipe, augment="ssd", max_boxes=10)
    for i in range(3):
        item = data[i]
        assert item["image"].shape == (3, 128, 128) and item["boxes"].shape == (10, 4)
        valid = item["labels"] >= 0
        assert valid.any() and (item["boxes"][valid][:, 2:] <= 128).all()
        assert np.all(item["labels"][~valid].numpy() == -1)
