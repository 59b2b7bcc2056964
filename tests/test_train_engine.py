"""The training / evaluation engine on super-resolution: tiny runs on crops of Set5."""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from cvkit.tasks.upscale.data import SRTrainDataset, downscale
from cvkit.tasks.upscale.models import SR_MODELS
from cvkit.tasks.upscale.training import (
    evaluate_folder,
    load_model,
    make_loss,
    read_weights,
    save_weights,
    sr_metric,
    train_upscale,
)
from parity import DATA, FIXTURES

import cvkit.engine.train as engine
from cvkit.errors import UsageError

SET5 = DATA / "sr" / "Set5"
PRESET = {"name": "espcn_x2", "model": "espcn", "args": {"scale": 2}, "train": {"loss": "mse"}}
TINY = {"epochs": 2, "batch_size": 4, "patch_size": 8, "repeat": 2, "lr": 1e-3, "progress": False}

pytestmark = pytest.mark.skipif(not SET5.is_dir(), reason="../shared/data/sr is absent")


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    """Four 48x48 crops of Set5 images as PNG."""
    folder = tmp_path_factory.mktemp("crops")
    for name in ("baby", "bird", "butterfly", "head"):
        img = cv2.imread(str(SET5 / f"{name}.png"))
        cv2.imwrite(str(folder / f"{name}.png"), img[100:148, 60:108])
    return folder


def test_training_writes_checkpoints_history_curve_and_weights(crops, tmp_path):
    s = train_upscale(PRESET, crops, crops, work_dir=tmp_path, **TINY)
    assert s["epochs"] == 2 and s["best_key"] == "psnr" and s["best_epoch"] in (1, 2)
    assert [h["epoch"] for h in s["history"]] == [1, 2]
    assert all({"loss", "lr", "psnr", "ssim"} <= set(h) for h in s["history"])
    for name in ("last.pth", "best.pth"):  # loadable without unpickling anything but tensors
        ckpt = torch.load(tmp_path / name, map_location="cpu", weights_only=True)
        assert ckpt["meta"]["cvkit"]["best"]["key"] == "psnr"
    last = torch.load(tmp_path / "last.pth", weights_only=True)
    assert last["meta"]["epoch"] == 2 and {"optimizer", "param_schedulers", "message_hub"} <= set(last)
    png = cv2.imread(s["curve"])
    assert png is not None and png.shape[0] > 100
    assert json.loads((tmp_path / "history.json").read_text()) == s["history"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files
    net = load_model(s["weights"], scale=2)
    assert net.scale == 2 and os.path.getsize(s["weights"]) < 1 << 20


def test_resume_after_kill_continues_epochs_optimizer_and_schedule(crops, tmp_path):
    def run(loss_fn, resume):
        net = SR_MODELS.get("espcn")(2)
        ds = SRTrainDataset(crops, 2, 8, "y", repeat=2)  # 8 samples -> 2 iterations per epoch
        return engine.train(net, ds, loss_fn=loss_fn, work_dir=tmp_path, epochs=3, batch_size=4, lr=1e-3,
                            resume=resume, progress=False)

    calls = {"n": 0}
    loss = make_loss("mse")

    def dies_in_epoch_2(model, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the "kill": epoch 1 finished, epoch 2 half done
        return loss(model, batch)

    with pytest.raises(KeyboardInterrupt):
        run(dies_in_epoch_2, resume=False)
    saved = torch.load(tmp_path / "last.pth", weights_only=True)
    assert saved["meta"]["epoch"] == 1 and saved["meta"]["iter"] == 2

    calls["n"] = 100  # no more kills
    s = run(dies_in_epoch_2, resume=True)
    assert calls["n"] == 100 + 4  # epochs 2 and 3 only, 2 iterations each
    assert [h["epoch"] for h in s["history"]] == [1, 2, 3]
    final = torch.load(tmp_path / "last.pth", weights_only=True)
    assert final["meta"]["epoch"] == 3 and final["meta"]["iter"] == 6
    steps = {int(v["step"]) for v in final["optimizer"]["state"].values()}
    assert steps == {6}  # Adam's moments continued from the checkpoint
    assert final["param_schedulers"][0]["_global_step"] == 6
    # the per-iteration cosine (T = 6 iterations, eta_min = lr / 100) continued where it stopped
    cosine = [1e-5 + 0.99e-3 * (1 + math.cos(math.pi * k / 6)) / 2 for k in (2, 4, 5)]
    assert [h["lr"] for h in s["history"]] == pytest.approx(cosine, rel=1e-9)


def test_bf16_warns_without_native_support_and_trains(crops, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bf16"):
        s = train_upscale(PRESET, crops, work_dir=tmp_path / "a", bf16=True, **{**TINY, "epochs": 1})
    assert s["epochs"] == 1
    monkeypatch.setattr(engine, "native_bf16", lambda: True)
    s = train_upscale(PRESET, crops, work_dir=tmp_path / "b", bf16=True, **{**TINY, "epochs": 1})
    assert np.isfinite(s["history"][0]["loss"])


def test_folder_without_images_is_a_usage_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(UsageError, match="no images"):
        SRTrainDataset(tmp_path, 2, 8)


def test_corrupt_image_is_skipped_and_counted(crops, tmp_path, caplog):
    for p in crops.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with caplog.at_level(logging.WARNING):
        ds = SRTrainDataset(tmp_path, 2, 8, "rgb")
    assert ds.skipped == 1 and len(ds.images) == 4
    assert "broken.png" in caplog.text
    item = ds[0]
    assert item["lr"].shape == (3, 8, 8) and item["hr"].shape == (3, 16, 16)


def test_training_patch_lr_equals_crop_of_whole_image_lr(crops):
    torch.manual_seed(0)
    ds = SRTrainDataset(crops, 3, 6, "y", augment=False)
    hr_full = ds.images[0]
    lr_full = downscale(hr_full, 3, "y")
    for _ in range(5):
        item = ds[0]
        found = [(y, x) for y in range(0, 48 - 18 + 1, 3) for x in range(0, 48 - 18 + 1, 3)
                 if torch.equal(hr_full[:, y:y + 18, x:x + 18], item["hr"])]
        y, x = found[0]
        torch.testing.assert_close(item["lr"], lr_full[:, y // 3:y // 3 + 6, x // 3:x // 3 + 6],
                                   atol=1e-6, rtol=0)


def test_weights_of_another_scale_are_refused(tmp_path):
    path = save_weights(SR_MODELS.get("espcn")(2), tmp_path / "espcn_x2.safetensors", name="espcn",
                        args={"scale": 2})
    _, meta = read_weights(path, scale=2)
    assert meta == {"task": "upscale", "model": "espcn", "scale": 2, "args": {"scale": 2}}
    with pytest.raises(UsageError, match="x2 checkpoint; x3 was asked for") as err:
        load_model(path, scale=3)
    assert "\n" not in str(err.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_gloo_on_cpu(crops, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(
        "import sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from cvkit.tasks.upscale.training import train_upscale\n"
        f"s = train_upscale({PRESET!r}, sys.argv[1], sys.argv[1], work_dir=sys.argv[2], epochs=2,\n"
        "                  batch_size=2, patch_size=8, repeat=2, progress=False)\n"
        "import json, os, pathlib\n"
        "out = pathlib.Path(sys.argv[2]) / f\"rank{os.environ['RANK']}.json\"\n"
        "out.write_text(json.dumps({'epochs': s['epochs'], 'world': os.environ['WORLD_SIZE']}))\n")
    work = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(_free_port()), str(script), str(crops), str(work)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    for rank in (0, 1):
        assert json.loads((work / f"rank{rank}.json").read_text()) == {"epochs": 2, "world": "2"}
    last = torch.load(work / "last.pth", weights_only=True)
    # 8 samples sharded over 2 ranks: 4 per rank, batch 2 -> 2 iterations per epoch
    assert last["meta"]["epoch"] == 2 and last["meta"]["iter"] == 4
    assert (work / "espcn_x2.safetensors").exists()


def test_evaluate_folder_bicubic_reproduces_published_set5_x3():
    ref = json.loads((FIXTURES / "metrics" / "set5_bicubic.json").read_text())
    tol, mean = ref["tolerance"], ref["results"]["x3"]["mean"]
    y = evaluate_folder(SR_MODELS.get("bicubic")(3, "y"), SET5, 3, progress=False)  # SRCNN protocol
    assert abs(y["psnr"] - mean["psnr_y_C"]) < tol["psnr_abs_db"]
    assert abs(y["ssim"] - mean["ssim_y_C"]) < tol["ssim_abs"]
    assert round(y["psnr"], 2) == 30.39 and round(y["ssim"], 4) == 0.8682
    rgb = evaluate_folder(SR_MODELS.get("bicubic")(3, "rgb"), SET5, 3, progress=False)  # BasicSR protocol
    assert abs(rgb["psnr"] - mean["psnr_y_A"]) < tol["psnr_abs_db"]
    assert abs(rgb["ssim"] - mean["ssim_y_A"]) < tol["ssim_abs"]
    per_image = ref["results"]["x3"]["per_image"]
    for r in y["per_image"]:
        assert abs(r["psnr"] - per_image[r["name"]]["psnr_y_C"]) < tol["psnr_abs_db"], r["name"]


def test_sr_metric_of_identity_is_infinite_psnr():
    hr = torch.rand(1, 1, 24, 24).mul(255).round().div(255)
    res = sr_metric(2)(lambda x: x, {"lr": hr, "hr": hr})
    assert res[0]["psnr"] == float("inf") and res[0]["ssim"] == pytest.approx(1.0)
