"""`cvkit depth`: colour maps, raw depth in millimetres, side by side, and one line per bad input."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from cvkit.tasks.depth.models import build_depth_model, save_weights
from cvkit.tasks.depth.render import TURBO, colorize, render_depth
from cvkit.tasks.depth.task import DepthTask
from parity import ONE_THREAD
from test_foundation import assert_one_line_error
from test_foundation import cli as _cli

from cvkit.media import Frame
from cvkit.presets import load_preset


def cli(*args):
    return _cli(*args, env=ONE_THREAD)


pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "depth_scene.png"
DEPTH_M = 2.345


def constant_preset(tmp_path: Path, depth_m: float = DEPTH_M) -> Path:
    """A YAML preset of the shipped architecture whose weights predict `depth_m` everywhere (the
    last BN has weight 0 and bias `depth_m`)."""
    preset = load_preset("fastdepth_synthetic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_depth_model(preset, "none")
    bn = model.decode_conv6[1]
    with torch.no_grad():
        bn.weight.zero_()
        bn.bias.fill_(depth_m)
    weights = save_weights(model, tmp_path / "constant.safetensors", preset)
    data = {k: preset[k] for k in ("task", "model", "backbone", "args")}
    data.update(name="constant_depth", imgsz=[64, 64], weights={"path": str(weights)})
    path = tmp_path / "constant_depth.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def write_rgb(path: Path, h: int, w: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    cv2.imwrite(str(path), img)


def test_cli_writes_colour_map_and_16bit_millimetres_mirroring_the_input_tree(tmp_path):
    preset = constant_preset(tmp_path)
    write_rgb(tmp_path / "in" / "a.png", 50, 70)
    write_rgb(tmp_path / "in" / "sub" / "b.jpg", 33, 91, seed=1)
    out = tmp_path / "out"
    res = cli("depth", str(tmp_path / "in"), "--preset", str(preset), "--save-raw", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "2 frames" in res.stdout and str(out) in res.stdout
    for rel, (h, w) in {"a": (50, 70), "sub/b": (33, 91)}.items():
        view = cv2.imread(str(out / f"{rel}.png"))
        assert view.shape == (h, w, 3)
        raw = cv2.imread(str(out / f"{rel}_depth.png"), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16 and raw.shape == (h, w)
        assert (raw == round(DEPTH_M * 1000)).all()
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert all(r["min_m"] == r["median_m"] == r["max_m"] == pytest.approx(DEPTH_M, abs=1e-4) for r in records)


def test_cli_raw_npy_in_metres_and_side_by_side_doubles_the_width(tmp_path):
    preset = constant_preset(tmp_path)
    write_rgb(tmp_path / "in" / "c.png", 40, 60)
    out = tmp_path / "out"
    res = cli("depth", str(tmp_path / "in" / "c.png"), "--preset", str(preset), "--save-raw", "--raw-format", "npy",
              "--side-by-side", "--no-json", "--out", str(out))
    assert res.returncode == 0, res.stderr
    depth = np.load(out / "c_depth.npy")
    assert depth.dtype == np.float32 and depth.shape == (40, 60)
    np.testing.assert_allclose(depth, DEPTH_M, atol=1e-5)
    view = cv2.imread(str(out / "c.png"))
    assert view.shape == (40, 120, 3)
    np.testing.assert_array_equal(view[:, :60], cv2.imread(str(tmp_path / "in" / "c.png")))


def test_save_raw_without_out_goes_to_the_numbered_run_folder(tmp_path):
    preset = constant_preset(tmp_path)
    write_rgb(tmp_path / "x.png", 32, 32)
    res = cli("depth", str(tmp_path / "x.png"), "--preset", str(preset), "--save-raw", "--project",
              str(tmp_path / "runs"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "runs" / "depth" / "exp" / "x_depth.png").is_file()
    assert (tmp_path / "runs" / "depth" / "exp" / "x.png").is_file()
    assert not (tmp_path / "runs" / "depth" / "exp2").exists()


def test_shipped_model_on_the_example_scene_is_plausible():
    from cvkit.tasks.depth.synthetic import render_scene

    import cvkit

    task = cvkit.load_task("fastdepth_synthetic")
    img = cv2.cvtColor(cv2.imread(str(EXAMPLE)), cv2.COLOR_BGR2RGB)
    batch, metas = task.preprocess([Frame(image=img, source="scene", meta={})])
    depth = task.postprocess(task.forward(batch), metas)[0]
    _, truth = render_scene(np.random.default_rng(1001), 192, 256, holes=False)  # how the example was made
    assert depth.shape == truth.shape
    ratio = np.maximum(depth / truth, truth / np.maximum(depth, 1e-6))
    assert (ratio < 1.25).mean() > 0.6
    assert np.median(np.abs(depth - truth) / truth) < 0.2


def test_colormap_is_warm_near_and_cold_far_with_a_legend():
    depth = np.tile(np.linspace(1, 5, 200, dtype=np.float32), (120, 1))
    rgb = colorize(depth, 1.0, 5.0)
    near, far = rgb[0, 20].astype(int), rgb[0, 180].astype(int)
    assert near[0] > near[2] + 100 and far[2] > far[0] + 100
    assert (colorize(np.zeros((2, 2), np.float32), 1, 5) == 0).all()
    assert TURBO.shape == (256, 3) and TURBO.dtype == np.uint8
    view = render_depth(depth)
    assert view.shape == (120, 200, 3) and not np.array_equal(view, render_depth(depth, legend=False))


def test_serialise_gives_min_median_max_of_valid_depth():
    task = DepthTask(torch.nn.Identity(), {"name": "t", "task": "depth"})
    d = np.array([[0.0, 1.0], [2.0, 4.0]], np.float32)
    assert task.serialise(d) == {"height": 2, "width": 2, "min_m": 1.0, "median_m": 2.0, "max_m": 4.0}


@pytest.mark.parametrize("args, code", [
    (["missing.png"], 2),
    (["--raw-format", "tiff", "--save-raw"], 2),
    (["--range", "5", "1"], 2),
    (["--weights", "not_a_checkpoint.txt"], 1),
])
def test_bad_inputs_give_one_clear_line(tmp_path, args, code):
    img = tmp_path / "x.png"
    write_rgb(img, 32, 32)
    (tmp_path / "not_a_checkpoint.txt").write_text("hello")
    source = [] if args[0] == "missing.png" else [str(img)]
    args = [str(tmp_path / a) if a.endswith((".png", ".txt")) else a for a in args]
    res = cli("depth", *source, *args, "--out", str(tmp_path / "out"))
    assert_one_line_error(res, code)
