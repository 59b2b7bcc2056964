"""Lane training: datasets (CULane lists, TuSimple json lines, bad samples skipped and counted),
the SCNN loss, and a learning proof through `cvkit train lanes` / `cvkit eval lanes`."""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cvkit.tasks.lanes.data import LaneDataset, tusimple_label
from cvkit.tasks.lanes.synthetic import write_dataset
from cvkit.tasks.lanes.training import lane_loss
from test_foundation import assert_one_line_error, cli

from cvkit.errors import UsageError

TINY = """name: scnn_tiny
task: lanes
description: learning-proof model
model: scnn
backbone: mobilenet_v2
args: {input_size: [128, 64], num_lanes: 4, channels: 32, hidden: 64}
eval: {rows: culane}
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("lanes") / "synthetic", train=6, val=2, size=(72, 128), seed=3,
                         tusimple=True)


def test_culane_and_tusimple_samples_give_matching_labels_and_flags(data):
    culane = LaneDataset(data, "train", input_size=(128, 64), protocol="culane")
    tusimple = LaneDataset(data, "train", input_size=(128, 64), protocol="tusimple")
    assert len(culane) == len(tusimple) == 6 and not culane.skipped and not tusimple.skipped
    a, b = culane[0], tusimple[0]
    assert a["image"].shape == (3, 64, 128) and a["label"].shape == (64, 128) and a["label"].dtype == torch.long
    assert a["size"].tolist() == [72, 128]
    assert torch.equal(a["image"], b["image"])
    assert int(a["label"].max()) <= 4 and a["exist"].sum() == b["exist"].sum() >= 1


def test_tusimple_lanes_are_drawn_15_px_wide_at_720_px_and_short_lanes_do_not_exist():
    h_samples = list(range(160, 720, 10))
    straight = [640.0] * len(h_samples)
    short = [-2.0] * (len(h_samples) - 3) + [100.0, 100.0, 100.0]
    label, exist = tusimple_label([straight, short], h_samples, (720, 1280))
    assert exist == [1.0, 0.0]
    reference = cv2.line(np.zeros((720, 1280), np.uint8), (640, 160), (640, 710), 1, 15)  # SEG_WIDTH // 2
    assert np.array_equal(label == 1, reference == 1) and not (label == 2).any()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_bad_samples_are_skipped_with_one_warning_each_and_counted(data, tmp_path, caplog):
    root = tmp_path / "bad"
    (root / "train").mkdir(parents=True)
    img = np.zeros((72, 128, 3), np.uint8)
    cv2.imwrite(str(root / "train" / "a.jpg"), img)
    cv2.imwrite(str(root / "a.png"), np.zeros((72, 128), np.uint8))
    cv2.imwrite(str(root / "small.png"), np.zeros((36, 64), np.uint8))
    lines = [
        "/train/a.jpg /a.png 1 0 0 0",            # good
        "/train/missing.jpg /a.png 1 0 0 0",      # missing image
        "/train/a.jpg /missing.png 1 0 0 0",      # missing label
        "/train/a.jpg /small.png 1 0 0 0",        # label of another size
        "/train/a.jpg /a.png 1 0 0 0 1 1",        # more lanes than classes
        "/../outside.jpg /a.png 1 0 0 0",         # leaves the dataset root
    ]
    _write(root / "list" / "train_gt.txt", "\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="cvkit"):
        ds = LaneDataset(root, "train", input_size=(128, 64))
    assert len(ds) == 1 and len(ds.skipped) == 5
    reasons = " | ".join(r for _, r in ds.skipped)
    for words in ("image not found", "label not found", "differs from image", "more lanes", "outside"):
        assert words in reasons
    assert sum(": skipped train_gt.txt:" in r.getMessage() for r in caplog.records) == 5

    h = list(range(160, 720, 10))
    lane = [10.0] * len(h)
    _write(root / "label_data_x.json", "\n".join([
        json.dumps({"raw_file": "train/a.jpg", "lanes": [lane], "h_samples": h}),            # good
        json.dumps({"raw_file": "train/a.jpg", "lanes": [lane[:-1]], "h_samples": h}),       # length mismatch
        '{"raw_file": "train/a.jpg", "lanes": [[1, 2]',                                      # malformed
        json.dumps({"raw_file": "train/a.jpg", "lanes": [lane] * 5, "h_samples": h}),        # 5 lanes > 4
        json.dumps({"raw_file": "train/nope.jpg", "lanes": [lane], "h_samples": h}),         # missing image
    ]) + "\n")
    ds = LaneDataset(root / "label_data_x.json", "train", input_size=(128, 64))
    assert len(ds) == 1 and len(ds.skipped) == 4
    reasons = " | ".join(r for _, r in ds.skipped)
    for words in ("values for", "malformed", "more than the model's 4", "image not found"):
        assert words in reasons


def test_a_dataset_without_usable_samples_is_one_line_error(tmp_path):
    bad = _write(tmp_path / "label_data_bad.json", "not json\n")
    with pytest.raises(UsageError, match="no usable train samples"):
        LaneDataset(bad, "train", input_size=(128, 64))
    res = cli("train", "lanes", "--data", str(bad), "--project", str(tmp_path / "runs"))
    assert_one_line_error(res, 2)


def test_loss_is_weighted_cross_entropy_plus_a_tenth_of_existence_bce():
    torch.manual_seed(0)
    seg = torch.randn(2, 5, 8, 16)
    exist = torch.rand(2, 4)

    def model(x):
        return {"seg_pred": seg, "exist_pred": exist}

    batch = {"image": None, "label": torch.randint(0, 5, (2, 8, 16)), "exist": (torch.rand(2, 4) > 0.5).float()}
    out = lane_loss(model, batch)
    ce = F.cross_entropy(seg, batch["label"], weight=torch.tensor([0.4, 1, 1, 1, 1]))
    torch.testing.assert_close(out["loss_seg"], ce)
    torch.testing.assert_close(out["loss_exist"], 0.1 * F.binary_cross_entropy(exist, batch["exist"]))


def _f1(stdout: str) -> float:
    return float(re.search(r" F1 (\S+)", stdout).group(1))


def test_brief_training_lifts_f1_far_above_the_untrained_model(tmp_path):
    data = write_dataset(tmp_path / "syn", train=240, val=16, size=(72, 128), seed=0)
    preset = _write(tmp_path / "tiny.yaml", TINY)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = tmp_path / "runs"
    res = cli("train", "lanes", "--data", str(data), "--preset", str(preset), "--epochs", "7", "--batch-size", "8",
              "--lr", "0.004", "--project", str(runs), env=env)
    assert res.returncode == 0, res.stderr
    weights = runs / "lanes" / "exp" / "scnn_tiny.safetensors"
    assert weights.is_file() and "best F1" in res.stdout
    trained = cli("eval", "lanes", "--data", str(data), "--preset", str(preset), "-w", str(weights), env=env)
    untrained = cli("eval", "lanes", "--data", str(data), "--preset", str(preset), "-w", "none", env=env)
    assert trained.returncode == 0 and untrained.returncode == 0, trained.stderr + untrained.stderr
    f1, f1_untrained = _f1(trained.stdout), _f1(untrained.stdout)
    assert f1 > 0.2 and not f1_untrained > 0.02, (trained.stdout, untrained.stdout)
