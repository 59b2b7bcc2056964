"""`cvkit lanes` and `cvkit eval lanes --pred`: rendered images and video, JSON lines, CULane and
TuSimple files that parse back with the metrics' parsers, smoothing, and one clear line for each
kind of bad input."""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from cvkit.tasks.lanes.evaluate import Predictions, lanes_at_rows, write_culane, write_tusimple
from cvkit.tasks.lanes.metrics import parse_culane_lines, tusimple_evaluate
from cvkit.tasks.lanes.postprocess import Lane
from cvkit.tasks.lanes.synthetic import render_scene, write_dataset
from cvkit.tasks.lanes.task import LaneSmoother
from PIL import Image
from test_foundation import assert_one_line_error, cli

import cvkit
from cvkit.media import Frame

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lanes_road.png"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny synthetic dataset at the shipped model's training size (4 val scenes)."""
    return write_dataset(tmp_path_factory.mktemp("lanes") / "synthetic", train=0, val=4, size=(144, 256),
                         seed=1, tusimple=True)


def test_shipped_model_finds_the_lanes_of_the_example_road():
    task = cvkit.load_task("scnn_synthetic")
    img = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    batch, metas = task.preprocess([Frame(image=img, source="road")])
    result = task.postprocess(task.forward(batch), metas)[0]
    assert len(result.lanes) >= 2
    for lane in result.lanes:
        assert lane.points.shape[1] == 2 and len(lane.points) >= 2
        assert (lane.points[:, 0] >= 0).all() and (lane.points[:, 0] < img.shape[1]).all()
        assert (np.diff(lane.points[:, 1]) < 0).all()  # bottom first
    rendered = task.render(Frame(image=img, source="road"), result)
    assert rendered.shape == img.shape and (rendered != img).any()


def test_lanes_cli_writes_images_json_lines_and_culane_files_that_score_back(data, tmp_path):
    out = tmp_path / "out"
    res = cli("lanes", str(data / "val"), "--format", "culane", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "4 .lines.txt files" in res.stdout and "4 frames" in res.stdout
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 4
    for rec in records:
        assert set(rec) >= {"source", "lanes", "exist", "height", "width"} and len(rec["exist"]) == 4
        assert Image.open(out / rec["source"]).size == (256, 144)
        lanes = parse_culane_lines((out / rec["source"]).with_suffix(".lines.txt").read_text())
        assert len(lanes) == len(rec["lanes"])
        for parsed, lane in zip(lanes, rec["lanes"]):
            np.testing.assert_allclose(parsed, np.asarray(lane["points"]), atol=1e-3)
    res = cli("eval", "lanes", "--pred", str(out), "--data", str(data), "--protocol", "culane")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("CULane precision") and "on 4 images" in res.stdout
    f1 = float(res.stdout.split(" F1 ")[1].split()[0])
    assert f1 > 0.5


def test_lanes_cli_tusimple_format_parses_with_the_tusimple_evaluator(data, tmp_path):
    out = tmp_path / "out"
    res = cli("lanes", str(data / "val"), "--format", "tusimple", "--out", str(out), "--no-save")
    assert res.returncode == 0, res.stderr
    preds = [json.loads(x) for x in (out / "predictions_tusimple.json").read_text().splitlines()]
    gts = [json.loads(x) for x in (data / "test_label.json").read_text().splitlines()]
    assert len(preds) == 4
    for p in preds:
        assert set(p) == {"raw_file", "lanes", "h_samples", "run_time"}
        assert p["h_samples"] == sorted(p["h_samples"]) and all(len(x) == len(p["h_samples"]) for x in p["lanes"])
        p["raw_file"] = "val/" + p["raw_file"]
    scores = tusimple_evaluate(preds, gts)  # frames slower than 200 ms score 0, as in the official tool
    assert tusimple_evaluate([{**p, "run_time": 0} for p in preds], gts)["Accuracy"] > 0.6
    res = cli("eval", "lanes", "--pred", str(out / "predictions_tusimple.json"), "--data", str(data),
              "--protocol", "tusimple")
    assert res.returncode == 0, res.stderr
    assert f"TuSimple accuracy {scores['Accuracy']:.4f}" in res.stdout


def test_lanes_cli_video_gives_h264_and_per_frame_lines_with_smoothing(tmp_path):
    clip = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    scene = render_scene(rng, (144, 256)).image
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 256, 144, "yuv420p"
        for k in range(4):
            frame = np.roll(scene, k, axis=1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    out = tmp_path / "out"
    res = cli("lanes", str(clip), "--smooth", "--format", "culane", "--out", str(out))
    assert res.returncode == 0, res.stderr
    with av.open(str(out / "clip.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in c.decode(video=0)) == 4
    assert sorted(p.name for p in (out / "clip").iterdir()) == [f"{k:06d}.lines.txt" for k in range(4)]


def test_smoothing_averages_a_slot_over_frames_and_resets_on_a_new_source():
    smooth = LaneSmoother(alpha=0.5)
    pts = np.array([[100, 200], [110, 180]], np.float32)
    smooth("a.mp4", [Lane(pts, 0.9, 1)])
    moved = smooth("a.mp4", [Lane(pts + [20, 0], 0.9, 1)])[0].points
    np.testing.assert_allclose(moved[:, 0], [110, 120])
    fresh = smooth("b.mp4", [Lane(pts + [20, 0], 0.9, 1)])[0].points
    np.testing.assert_allclose(fresh[:, 0], [120, 130])


def test_written_formats_round_trip_through_the_prediction_reader(tmp_path):
    records = [{"source": "d/a.jpg", "index": 0, "timestamp": None, "height": 720,
                "lanes": [{"slot": 1, "score": 0.9, "points": [[600.0, 710.0], [590.0, 700.0], [580.0, 690.0]]}]}]
    write_culane(records, tmp_path)
    assert Predictions(tmp_path).polylines("root/d/a.jpg")[0].tolist() == records[0]["lanes"][0]["points"]
    write_tusimple(records, tmp_path / "t.json")
    rec = json.loads((tmp_path / "t.json").read_text())
    assert rec["raw_file"] == "d/a.jpg" and rec["h_samples"][-3:] == [690, 700, 710]
    assert rec["lanes"][0][-3:] == [580, 590, 600] and rec["lanes"][0][0] == -2
    xs, _ = Predictions(tmp_path / "t.json").tusimple("clips/d/a.jpg", [695, 705, 715])
    assert xs == [[585.0, 595.0, -2]]
    assert lanes_at_rows(np.array([[0.0, 10.0]]), [10]) == [-2]


def test_unknown_format_is_a_usage_error_in_one_line(tmp_path):
    res = cli("lanes", str(EXAMPLE), "--format", "kitti", "--out", str(tmp_path / "o"))
    assert_one_line_error(res, 2)
    assert "culane" in res.stderr


def test_missing_predictions_and_missing_dataset_are_one_line_errors(data, tmp_path):
    assert_one_line_error(cli("eval", "lanes", "--pred", str(tmp_path / "nothing"), "--data", str(data)), 2)
    assert_one_line_error(cli("eval", "lanes", "--data", str(tmp_path / "no_dataset")), 2)
