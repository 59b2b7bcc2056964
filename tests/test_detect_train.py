"""Learning proof for detection: `cvkit train detect` on a tiny synthetic shapes set, then
`cvkit eval detect` (pycocotools) shows mAP far above the untrained model; training on a VOC
layout and resuming after an interruption; plus the COCO metric itself and the dataset tensors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import cvkit.tasks.detect.training as detect_training
import numpy as np
import pytest
import torch
from cvkit.tasks.detect.build import build_from_preset
from cvkit.tasks.detect.data import load_dataset
from cvkit.tasks.detect.synthetic import SHAPES, draw_shapes, make_shapes_dataset
from cvkit.tasks.detect.task import DetectTask
from cvkit.tasks.detect.training import (
    DetectionDataset,
    coco_ground_truth,
    coco_map,
    evaluate_coco,
    image_ap50,
    train_detect,
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


def write_voc_image(root: Path, stem: str, image: np.ndarray, objects: list[tuple[list[float], str]]) -> None:
    """JPEGImages/<stem>.jpg and Annotations/<stem>.xml (VOC's 1-based pixel boxes) of `objects`
    [(box x1y1x2y2 in 0-based pixels, class name)]."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(exist_ok=True)
    cv2.imwrite(str(root / "JPEGImages" / f"{stem}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    h, w = image.shape[:2]
    xml_objects = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1:g}</xmin>"
        f"<ymin>{y1 + 1:g}</ymin><xmax>{x2:g}</xmax><ymax>{y2:g}</ymax></bndbox></object>"
        for (x1, y1, x2, y2), name in objects
    )
    (root / "Annotations" / f"{stem}.xml").write_text(
        f"<annotation><filename>{stem}.jpg</filename><size><width>{w}</width><height>{h}</height>"
        f"<depth>3</depth></size>{xml_objects}</annotation>"
    )


def write_split(root: Path, split: str, stems: list[str]) -> None:
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))


def make_voc_shapes(root: Path, splits: dict[str, int], size: int = 64, seed: int = 0) -> Path:
    """A VOC-layout shapes set; `splits` maps each split to its number of images."""
    rng, n = np.random.default_rng(seed), 0
    for split, count in splits.items():
        stems = [f"{n + i + 1:06d}" for i in range(count)]
        for stem in stems:
            image, objects = draw_shapes(rng, (size, size), max_objects=2)
            write_voc_image(root, stem, image, [(box, SHAPES[c]) for box, c in objects])
        write_split(root, split, stems)
        n += count
    return root


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


def test_voc_splits_share_the_class_list_of_all_annotations(tmp_path):
    image = np.zeros((32, 32, 3), np.uint8)
    write_voc_image(tmp_path, "a", image, [([1, 1, 10, 10], "rectangle"), ([12, 12, 30, 30], "triangle")])
    write_voc_image(tmp_path, "b", image, [([4, 4, 20, 20], "ellipse")])
    write_split(tmp_path, "train", ["a"])
    write_split(tmp_path, "val", ["b"])
    train, val = load_dataset(tmp_path, "train"), load_dataset(tmp_path, "val")
    assert train.classes == val.classes == ["ellipse", "rectangle", "triangle"]
    assert train.samples[0].labels.tolist() == [1, 2] and val.samples[0].labels.tolist() == [0]
    assert val.samples[0].boxes.tolist() == [[4.0, 4.0, 20.0, 20.0]]


def test_voc_training_on_a_split_then_evaluation_on_another(tmp_path):
    voc = make_voc_shapes(tmp_path / "voc", {"train": 6, "val": 3})
    (tmp_path / "tiny.yaml").write_text(TINY)
    args = ["--data", str(voc), "--preset", str(tmp_path / "tiny.yaml"), "--epochs", "1", "--batch-size", "3"]
    res = cli("train", "detect", *args, "--split", "train", "--augment", "none", "--project",
              str(tmp_path / "runs"), env=ONE_THREAD)
    assert res.returncode == 0, res.stderr
    assert "trained 1 epochs on 6 images" in res.stdout
    last = torch.load(tmp_path / "runs" / "detect" / "exp" / "last.pth", weights_only=True)
    assert last["meta"]["epoch"] == 1 and last["meta"]["iter"] == 2
    weights = re.search(r"weights: (\S+)", res.stdout).group(1)
    task = DetectTask.from_preset(load_preset("retinanet_shapes"), weights=weights)
    assert task.names == sorted(SHAPES) and task.model.num_classes == 3  # the dataset's, not the preset's order
    ev = cli("eval", "detect", "--data", str(voc), "--split", "val", "--weights", weights, "--out",
             str(tmp_path / "eval"), env=ONE_THREAD)
    assert ev.returncode == 0, ev.stderr
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["images"] == 3


def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    voc = make_voc_shapes(tmp_path / "voc", {"train": 8})
    (tmp_path / "tiny.yaml").write_text(TINY)
    preset = load_preset(str(tmp_path / "tiny.yaml"))
    train_set = load_dataset(voc, "train")

    def run(work_dir, resume=False):
        return train_detect(preset, train_set, work_dir=work_dir, epochs=3, batch_size=4, lr=1e-3,
                            augment="none", resume=resume, progress=False)

    whole = run(tmp_path / "whole")
    loss, calls = detect_training.detect_loss, {"n": 0}

    def dies_in_epoch_2(model, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the kill: epoch 1 saved, epoch 2 half done
        return loss(model, batch)

    monkeypatch.setattr(detect_training, "detect_loss", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut")
    saved = torch.load(tmp_path / "cut" / "last.pth", weights_only=True)
    assert saved["meta"]["epoch"] == 1 and saved["meta"]["iter"] == 2
    calls["n"] = 100  # no more kills
    resumed = run(tmp_path / "cut", resume=True)
    assert calls["n"] == 104  # epochs 2 and 3 only, 2 iterations each
    final = torch.load(tmp_path / "cut" / "last.pth", weights_only=True)
    assert final["meta"]["epoch"] == 3 and final["meta"]["iter"] == 6
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    for a, b in zip(resumed["history"], whole["history"]):  # same seed: same start, same batches
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["lr"] == pytest.approx(b["lr"], rel=1e-9)

