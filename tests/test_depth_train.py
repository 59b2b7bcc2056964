"""Depth training and evaluation: the learning proof, datasets' bad samples, augmentations and
`cvkit train/eval depth` (with a model and from saved predictions)."""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from cvkit.tasks.depth.data import DepthDataset, TrainTransform, ValTransform
from cvkit.tasks.depth.models import build_depth_model
from cvkit.tasks.depth.synthetic import render_scene, write_synthetic
from cvkit.tasks.depth.task import depth_to_mm
from cvkit.tasks.depth.training import evaluate_model, frame_metrics, train_depth
from parity import ONE_THREAD
from test_depth_task import constant_preset
from test_foundation import assert_one_line_error
from test_foundation import cli as _cli

from cvkit.errors import CvkitError
from cvkit.presets import validate


def cli(*args):
    return _cli(*args, env=ONE_THREAD)


pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"name": "tiny_depth", "task": "depth", "model": "fastdepth", "backbone": "mobilenet_v1",
         "args": {"encoder_widths": [8, 16, 32, 32, 64, 64, 128, 128, 128, 128, 128, 128, 256, 256],
                  "decoder_widths": [128, 64, 32, 16, 8]},
         "imgsz": [64, 64]}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_synthetic(root / "train", 32, (64, 80), seed=0)
    write_synthetic(root / "val", 8, (64, 80), seed=1)
    return root


def test_synthetic_scenes_have_exact_pinhole_depth_and_holes_as_zero(tmp_path):
    rgb, depth = render_scene(np.random.default_rng(3), 60, 80)
    assert rgb.shape == (60, 80, 3) and rgb.dtype == np.uint8 and depth.dtype == np.float32
    valid = depth[depth > 0]
    assert 0.5 < valid.min() and valid.max() < 20
    flat = render_scene(np.random.default_rng(3), 60, 80, holes=False)[1]
    assert (flat > 0).all()
    # the floor's depth grows towards the horizon (rows further up are further away)
    assert flat[-1, 40] < flat[-10, 40]
    paths = write_synthetic(tmp_path, 2, (24, 32), seed=5)
    stored = cv2.imread(str(tmp_path / "depth" / paths[0].name), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint16 and stored.shape == (24, 32)
    np.testing.assert_array_equal(stored, depth_to_mm(render_scene(np.random.default_rng(5), 24, 32)[1]))


def test_training_briefly_beats_the_untrained_model_and_a_constant_predictor(synth, tmp_path):
    torch.manual_seed(0)
    preset = validate(SMALL, "test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        untrained = build_depth_model(preset, "none").eval()
    before = evaluate_model(untrained, preset, synth / "val", progress=False, worst=0)
    s = train_depth(preset, synth / "train", synth / "val", work_dir=tmp_path / "run", weights="none", epochs=20,
                    batch_size=8, lr=3e-3, min_items=128, progress=False)
    trained = build_depth_model(preset, s["weights"]).eval()
    after = evaluate_model(trained, preset, synth / "val", progress=False, out_dir=tmp_path, worst=2)

    train_set = DepthDataset(synth / "train")
    mean = float(np.mean(np.concatenate([d[d > 0] for d in (train_set.load(i)[1] for i in range(len(train_set)))])))
    val_set = DepthDataset(synth / "val", ValTransform((64, 64)))
    constant = np.mean([frame_metrics(torch.full_like(it["depth"], mean)[None], it["depth"][None], "target")["rmse"]
                        for it in val_set]) / 1000
    assert after["rmse_m"] < 0.5 * before["rmse_m"], (after["rmse_m"], before["rmse_m"])
    assert after["rmse_m"] < 0.85 * constant, (after["rmse_m"], constant)
    assert after["delta1"] > 0.5
    assert Path(after["worst_frames"]).is_file()
    assert cv2.imread(after["worst_frames"]).shape == (2 * 64, 4 * 64, 3)


def _write_h5(path: Path, rgb=None, depth=None, keys=("rgb", "depth")):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 48, 64), dtype=np.uint8) if rgb is None else rgb
    depth = rng.uniform(0.5, 5, (48, 64)).astype(np.float32) if depth is None else depth
    with h5py.File(path, "w") as f:
        for k, v in zip(("rgb", "depth"), (rgb, depth)):
            if k in keys:
                f.create_dataset(k, data=v)


def test_nyu_h5_bad_files_are_skipped_and_counted(tmp_path, caplog):
    _write_h5(tmp_path / "train" / "good.h5")
    _write_h5(tmp_path / "train" / "no_depth.h5", keys=("rgb",))
    _write_h5(tmp_path / "train" / "mismatch.h5", depth=np.ones((40, 64), np.float32))
    _write_h5(tmp_path / "train" / "all_invalid.h5", depth=np.zeros((48, 64), np.float32))
    with caplog.at_level(logging.WARNING, logger="cvkit.depth"):
        ds = DepthDataset(tmp_path / "train", ValTransform((32, 32)))
    assert ds.kind == "h5" and len(ds) == 1 and ds.names == ["good"]
    reasons = {Path(p).name: r for p, r in ds.skipped}
    assert set(reasons) == {"no_depth.h5", "mismatch.h5", "all_invalid.h5"}
    assert "no 'depth'" in reasons["no_depth.h5"] and "differ in size" in reasons["mismatch.h5"]
    assert "all-invalid" in reasons["all_invalid.h5"]
    assert sum("skipping" in r.getMessage() for r in caplog.records) == 3
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["depth"].shape == (1, 32, 32)


def test_folder_bad_depth_maps_are_skipped_and_counted(tmp_path):
    write_synthetic(tmp_path, 5, (24, 32), seed=0)
    d = tmp_path / "depth"
    cv2.imwrite(str(d / "00001.png"), np.full((24, 32), 100, np.uint8))  # 8-bit
    cv2.imwrite(str(d / "00002.png"), np.full((20, 32), 1000, np.uint16))  # another size
    cv2.imwrite(str(d / "00003.png"), np.zeros((24, 32), np.uint16))  # all invalid
    (d / "00004.png").unlink()  # missing
    ds = DepthDataset(tmp_path)
    assert len(ds) == 1 and len(ds.skipped) == 4
    reasons = [r for _, r in ds.skipped]
    assert "8-bit" in reasons[0] and "differ in size" in reasons[1] and "all-invalid" in reasons[2]
    assert "no depth map" in reasons[3]
    for name in ("00000", "00001", "00002", "00003"):
        (tmp_path / "rgb" / f"{name}.png").unlink(missing_ok=True)
    (tmp_path / "rgb" / "00004.png").unlink()
    with pytest.raises(CvkitError, match="not a depth dataset|no usable"):
        DepthDataset(tmp_path)


def test_train_transform_divides_depth_by_the_scale_and_keeps_image_and_depth_aligned():
    rgb = np.zeros((120, 160, 3), np.uint8)
    rgb[:, :80] = 255
    depth = np.where(np.arange(160)[None] < 80, 1.0, 3.0).astype(np.float32).repeat(120, 0)
    t = TrainTransform((64, 96))
    for seed in range(5):
        t.rng.seed(seed)
        img, d = t(rgb, depth)
        assert img.shape == (64, 96, 3) and d.shape == (64, 96)
        bright = img.mean(-1) > 128
        near, far = d[bright & (d > 0)], d[~bright & (d > 0)]
        ratio = far.mean() / near.mean()
        assert 2.5 < ratio < 3.5  # the same pixels stay together
        assert 1 / 1.5 - 0.01 < near.mean() <= 1.0 + 1e-6  # depth / s with s in [1, 1.5]


def test_eval_pred_mode_reads_saved_png_and_npy_without_a_model(tmp_path):
    write_synthetic(tmp_path / "data", 3, (24, 32), seed=0)
    pred = tmp_path / "pred"
    pred.mkdir()
    truth = [cv2.imread(str(tmp_path / "data" / "depth" / f"{i:05d}.png"), cv2.IMREAD_UNCHANGED) for i in range(3)]
    cv2.imwrite(str(pred / "00000_depth.png"), truth[0])  # exact, as `cvkit depth --save-raw` writes
    np.save(pred / "00001.npy", truth[1].astype(np.float32) / 1000 + 0.1)  # 10 cm too far everywhere
    res = cli("eval", "depth", "--pred", str(pred), "--data", str(tmp_path / "data"), "--json",
              str(tmp_path / "r.json"), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert "RMSE" in res.stdout and "delta1" in res.stdout
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["frames"] == 2 and len(r["skipped"]) == 1 and r["valid"] == "target"
    per = {p["name"]: p for p in r["per_image"]}
    assert per["00000"]["rmse"] == 0 and per["00000"]["delta1"] == 1
    assert per["00001"]["rmse"] == pytest.approx(100, abs=0.01)
    assert r["rmse"] == pytest.approx(50, abs=0.01) and r["rmse_m"] == pytest.approx(0.05, abs=1e-5)
    assert (tmp_path / "out" / "worst_frames.png").is_file()


def test_eval_pred_mode_bad_inputs_give_one_line(tmp_path):
    write_synthetic(tmp_path / "data", 1, (24, 32), seed=0)
    (tmp_path / "pred").mkdir()
    cv2.imwrite(str(tmp_path / "pred" / "00000.png"), np.zeros((24, 32, 3), np.uint8))  # a colour image
    res = cli("eval", "depth", "--pred", str(tmp_path / "pred"), "--data", str(tmp_path / "data"),
              "--out", str(tmp_path / "out"))
    assert_one_line_error(res, 1)
    assert "no prediction" in res.stderr
    res = cli("eval", "depth", "--pred", str(tmp_path / "pred"), "--data", str(tmp_path / "nowhere"),
              "--out", str(tmp_path / "out"))
    assert_one_line_error(res, 1)


def test_cli_train_then_eval_with_the_exported_weights(tmp_path):
    write_synthetic(tmp_path / "data" / "train", 4, (48, 64), seed=0)
    write_synthetic(tmp_path / "data" / "val", 2, (48, 64), seed=1)
    preset = constant_preset(tmp_path)
    res = cli("train", "depth", "--data", str(tmp_path / "data"), "--preset", str(preset), "--epochs", "1",
              "--batch-size", "2", "--work-dir", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    weights = tmp_path / "run" / "constant_depth.safetensors"
    assert weights.is_file() and "best delta1" in res.stdout
    res = cli("eval", "depth", "--data", str(tmp_path / "data" / "val"), "--preset", str(preset), "--weights",
              str(weights), "--json", str(tmp_path / "r.json"), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["frames"] == 2 and 0 <= r["delta1"] <= 1 and Path(r["worst_frames"]).is_file()
