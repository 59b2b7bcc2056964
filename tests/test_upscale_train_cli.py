"""`cvkit train upscale` / `cvkit eval upscale` and the shipped ESPCN and SCNet-T weights."""
from __future__ import annotations

import json

import pytest
from cvkit.tasks.upscale.models import SR_MODELS
from cvkit.tasks.upscale.training import save_weights
from parity import DATA, FIXTURES
from test_foundation import assert_one_line_error, cli

import cvkit

SET5 = DATA / "sr" / "Set5"


PUBLISHED_BICUBIC = {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_eval_bicubic_reproduces_the_published_set5_numbers(tmp_path, scale):
    ref = json.loads((FIXTURES / "metrics" / "set5_bicubic.json").read_text())
    tol = ref["tolerance"]
    res = cli("eval", "upscale", "--preset", f"bicubic_x{scale}", "--data", str(SET5),
              "--json", str(tmp_path / "r.json"))
    assert res.returncode == 0, res.stderr
    out = json.loads((tmp_path / "r.json").read_text())
    per_image = ref["results"][f"x{scale}"]["per_image"]
    for row in out["per_image"]:
        assert abs(row["psnr"] - per_image[row["name"]]["psnr_y_C"]) <= tol["psnr_abs_db"], row
        assert abs(row["ssim"] - per_image[row["name"]]["ssim_y_C"]) <= tol["ssim_abs"], row
    assert (round(out["psnr"], 2), round(out["ssim"], 4)) == PUBLISHED_BICUBIC[scale]


@pytest.mark.parametrize("preset, floor", [("espcn_x2", 36.0), ("espcn_x3", 32.4), ("espcn_x4", 30.0),
                                           ("scnet_x4", 30.5)])
def test_shipped_weights_beat_bicubic_on_set5(tmp_path, preset, floor):
    res = cli("eval", "upscale", "--preset", preset, "--data", str(SET5), "--json", str(tmp_path / "r.json"))
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "r.json").read_text())["psnr"] >= floor  # x3 target 32.4


def test_train_upscale_writes_weights_and_resumes(tmp_path):
    args = ["train", "upscale", "--preset", "espcn_x3", "--data", str(SET5), "--val", str(SET5),
            "--set", "train.repeat=2", "--batch-size", "8", "--patch-size", "12", "--project", str(tmp_path)]
    res = cli(*args, "--epochs", "1")
    assert res.returncode == 0, res.stderr
    run = tmp_path / "train" / "upscale" / "exp"
    assert (run / "last.pth").is_file() and (run / "best.pth").is_file()
    assert (run / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "espcn_x3.safetensors").is_file()
    res = cli(*args, "--epochs", "2", "--resume", str(run))
    assert res.returncode == 0, res.stderr
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert "trained 2 epochs" in res.stdout
    # the exported weights run through the normal upscale path
    task = cvkit.load_task("espcn_x3", weights=str(run / "espcn_x3.safetensors"))
    assert task.scale == 3


def test_train_refuses_bicubic_and_empty_folders(tmp_path):
    assert_one_line_error(cli("train", "upscale", "--preset", "bicubic_x3", "--data", str(SET5)), 2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "broken.png").write_bytes(b"not a png")
    res = cli("train", "upscale", "--preset", "espcn_x3", "--data", str(tmp_path / "empty"),
              "--project", str(tmp_path))
    assert_one_line_error(res, 2)
    assert "could not be read" in res.stderr or "could be read" in res.stderr


def test_checkpoint_of_the_wrong_scale_is_refused(tmp_path):
    net = SR_MODELS.build("espcn", scale=2)
    save_weights(net, tmp_path / "x2.safetensors", name="espcn", args={"scale": 2})
    res = cli("upscale", str(SET5 / "bird.png"), "--preset", "espcn_x3", "--weights",
              str(tmp_path / "x2.safetensors"), "--out", str(tmp_path / "o"))
    assert_one_line_error(res, 1)
    assert "trained for x2" in res.stderr
