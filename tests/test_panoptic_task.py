"""`cvkit panoptic`: overlay, COCO panoptic PNG + segments_info outputs, video, eval of saved predictions."""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from cvkit.tasks.panoptic.data import make_synthetic
from cvkit.tasks.panoptic.metrics import read_panoptic_png
from cvkit.tasks.panoptic.task import label_map_to_segments
from cvkit.tasks.panoptic.training import evaluate_panoptic
from PIL import Image
from test_foundation import assert_one_line_error, cli

import cvkit
from cvkit.media import Frame

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "panoptic_scene.png"
CATS = [{"id": 1, "name": "sky", "isthing": 0}, {"id": 2, "name": "ground", "isthing": 0},
        {"id": 3, "name": "circle", "isthing": 1}]


def test_label_map_becomes_numbered_segments_with_coco_categories():
    labels = np.array([[0, 0, 2001, 2001], [1000, 1000, 2002, -1]])
    res = label_map_to_segments(labels, CATS, 1000)
    assert res["ids"].tolist() == [[1, 1, 3, 3], [2, 2, 4, 0]]
    info = {s["id"]: s for s in res["segments_info"]}
    assert [(info[i]["category_id"], info[i]["isthing"], info[i]["area"]) for i in (1, 2, 3, 4)] == [
        (1, False, 2), (2, False, 2), (3, True, 2), (3, True, 1)]
    assert info[3]["bbox"] == [2, 0, 2, 1]


def test_render_paints_instances_of_one_class_in_different_colours_with_outlines():
    task = cvkit.load_task("panoptic_deeplab_synthetic", weights="none", task="panoptic")
    labels = np.zeros((60, 80), np.int64)
    labels[10:30, 10:30] = 2001
    labels[10:30, 50:70] = 2002
    res = label_map_to_segments(labels, task.categories, 1000)
    out = task.render(Frame(image=np.full((60, 80, 3), 128, np.uint8), source="x"), res)
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8
    assert not np.array_equal(out[12, 14], out[12, 54])  # per-instance colours (away from the labels)
    assert (out[10, 55] == 255).all()  # white outline on a thing's border


def test_panoptic_cli_writes_overlay_id_pngs_json_lines_and_coco_json(tmp_path):
    res = cli("panoptic", str(EXAMPLE), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert "1 frames" in res.stdout
    out = tmp_path / "out"
    assert Image.open(out / "panoptic_scene.jpg").size == Image.open(EXAMPLE).size
    rec = json.loads((out / "predictions.jsonl").read_text())
    ids = read_panoptic_png(out / "panoptic" / rec["file_name"])
    assert ids.shape == (rec["height"], rec["width"])
    present, counts = np.unique(ids[ids > 0], return_counts=True)
    info = {s["id"]: s for s in rec["segments_info"]}
    assert sorted(info) == present.tolist()
    assert [info[i]["area"] for i in present.tolist()] == counts.tolist()
    assert {s["category_id"] for s in info.values()} >= {1, 2}  # the trained model finds sky and ground
    assert any(s["isthing"] for s in info.values())
    coco = json.loads((out / "panoptic.json").read_text())
    assert coco["annotations"][0]["segments_info"] == rec["segments_info"]
    assert [c["name"] for c in coco["categories"]] == ["sky", "ground", "circle", "square", "triangle"]


def test_saved_predictions_evaluate_like_the_model(tmp_path):
    make_synthetic(tmp_path / "data", 3, size=64, seed=5)
    res = cli("panoptic", str(tmp_path / "data" / "images"), "--out", str(tmp_path / "pred"), "--no-save")
    assert res.returncode == 0, res.stderr
    from_files = cli("eval", "panoptic", "--data", str(tmp_path / "data"), "--pred", str(tmp_path / "pred"))
    assert from_files.returncode == 0, from_files.stderr
    task = cvkit.load_task("panoptic_deeplab_synthetic", task="panoptic")
    direct = evaluate_panoptic(task.model, tmp_path / "data", progress=False)
    all_line = next(ln for ln in from_files.stdout.splitlines() if ln.startswith("All"))
    assert float(all_line.split()[1]) == pytest.approx(100 * direct["All"]["pq"], abs=0.051)
    assert "3 images" in from_files.stdout


def test_video_gives_an_mp4_and_one_id_png_per_frame(tmp_path):
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(3):
            img = np.full((48, 64, 3), 90, np.uint8)
            img[20:30, 10 + 5 * i:20 + 5 * i] = 250
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode(None))
    res = cli("panoptic", str(path), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "clip.mp4").is_file()
    assert sorted(p.name for p in (tmp_path / "out" / "panoptic" / "clip").iterdir()) == [
        "000000.png", "000001.png", "000002.png"]
    assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == 3


def test_unknown_preset_is_one_line_usage_error(tmp_path):
    assert_one_line_error(cli("panoptic", str(EXAMPLE), "--preset", "nope", "--out", str(tmp_path)), 2)


def test_segformer_runs_through_the_task():
    task = cvkit.load_task("panoptic_deeplab_synthetic", weights="none", task="panoptic",
                           overrides=["model=panoptic_segformer", "backbone=null", "args={}", "classes=null"])
    torch.manual_seed(0)
    frame = Frame(image=np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8), source="a.png",
                  meta={"rel": "a.png", "kind": "image"})
    batch, metas = task.preprocess([frame])
    result = task.postprocess(task.forward(batch), metas)[0]
    assert result["ids"].shape == (70, 90) and result["file_name"] == "a.png"
    assert len(task.categories) == 133
