"""`cvkit upscale`: outputs, tiling, and one clear line for each kind of bad input."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_foundation import assert_one_line_error, cli

import cvkit
from cvkit.engine.task import get_task
from cvkit.media import Frame

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "upscale"


def upscale_array(task, img):
    batch, metas = task.preprocess([Frame(image=img, source="t", index=0, timestamp=None, meta={})])
    return task.postprocess(task.forward(batch), metas)[0]


def test_upscale_examples_writes_pngs_three_times_larger_and_json_lines(tmp_path):
    res = cli("upscale", str(EXAMPLES), "--preset", "bicubic_x3", "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert "2 frames" in res.stdout and str(tmp_path / "out") in res.stdout
    for src in EXAMPLES.glob("*.png"):
        lr = np.asarray(Image.open(src))
        sr = np.asarray(Image.open(tmp_path / "out" / src.name))
        assert sr.shape == (lr.shape[0] * 3, lr.shape[1] * 3, 3)
    records = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 2


def test_bicubic_upscale_equals_matlab_imresize():
    from cvkit.tasks.upscale.imresize import imresize_np
    task = cvkit.load_task("bicubic_x4")
    img = np.asarray(Image.open(EXAMPLES / "bird_lr.png").convert("RGB"))
    ref = np.clip(imresize_np(img.astype(np.float64) / 255, 4), 0, 1) * 255
    out = upscale_array(task, img).astype(np.float64)
    assert np.abs(out - ref).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("preset, overrides", [("bicubic_x4", []), ("scnet_x4", []),
                                               ("bicubic_x3", ["model=espcn", "args.mode=y"])])
def test_tiled_output_equals_untiled_within_one_grey_level(preset, overrides):
    torch.manual_seed(0)
    whole = cvkit.load_task(preset, weights="none", overrides=overrides, task="upscale")
    tiled = get_task("upscale")(whole.model, whole.preset, tile=24, tile_overlap=12)
    img = (np.random.default_rng(0).random((61, 83, 3)) * 255).astype(np.uint8)
    a, b = upscale_array(whole, img), upscale_array(tiled, img)
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b).max() <= 1


def test_shipped_espcn_runs_channels_last_and_matches_the_contiguous_model_within_one_grey_level():
    task = cvkit.load_task("espcn_x3")
    convs = [p for p in task.model.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    nchw = get_task("upscale")(copy.deepcopy(task.model).to(memory_format=torch.contiguous_format), task.preset)
    img = np.asarray(Image.open(EXAMPLES / "bird_lr.png").convert("RGB"))
    assert np.abs(upscale_array(task, img).astype(int) - upscale_array(nchw, img)).max() <= 1


def test_tile_not_larger_than_overlap_is_a_usage_error():
    res = cli("upscale", str(EXAMPLES), "--preset", "bicubic_x2", "--tile", "8", "--tile-overlap", "16")
    assert_one_line_error(res, 2)
    assert "--tile 8 must be larger than --tile-overlap 16" in res.stderr


def test_scale_the_preset_does_not_support_is_a_usage_error(tmp_path):
    res = cli("upscale", str(EXAMPLES), "--preset", "scnet_x4", "--scale", "3", "--out", str(tmp_path))
    assert_one_line_error(res, 2)
    assert "upscales x4" in res.stderr


def test_missing_and_truncated_weights_exit_1(tmp_path):
    res = cli("upscale", str(EXAMPLES), "--preset", "scnet_x4", "--weights", str(tmp_path / "no.pth"),
              "--out", str(tmp_path / "o"))
    assert_one_line_error(res, 1)
    assert "not found" in res.stderr
    (tmp_path / "trunc.pth").write_bytes(b"PK\x03\x04garbage")
    res = cli("upscale", str(EXAMPLES), "--preset", "scnet_x4", "--weights", str(tmp_path / "trunc.pth"),
              "--out", str(tmp_path / "o"))
    assert_one_line_error(res, 1)
    assert "not a readable checkpoint" in res.stderr


def test_checkpoint_with_wrong_keys_exit_1(tmp_path):
    torch.save({"params": {"conv.weight": torch.zeros(3, 3, 1, 1)}}, tmp_path / "other.pth")
    res = cli("upscale", str(EXAMPLES), "--preset", "scnet_x4", "--weights", str(tmp_path / "other.pth"),
              "--out", str(tmp_path / "o"))
    assert_one_line_error(res, 1)
    assert "missing" in res.stderr and "unexpected: conv.weight" in res.stderr


def test_random_weights_warn_loudly(tmp_path):
    res = cli("upscale", str(EXAMPLES / "bird_lr.png"), "--preset", "scnet_x4", "--weights", "none",
              "--out", str(tmp_path / "o"), "--no-json")
    assert res.returncode == 0, res.stderr
    assert "meaningless" in res.stderr
    assert (tmp_path / "o" / "bird_lr.png").is_file()


def test_unknown_preset_names_closest(tmp_path):
    res = cli("upscale", str(EXAMPLES), "--preset", "bicubic_x5")
    assert_one_line_error(res, 2)
    assert "did you mean" in res.stderr


def test_preset_of_another_task_is_refused(tmp_path):
    p = tmp_path / "d.yaml"
    p.write_text("name: d\ntask: detect\nmodel: retinanet\n")
    assert_one_line_error(cli("upscale", str(EXAMPLES), "--preset", str(p)), 2)
