"""Panoptic-DeepLab training: synthetic COCO panoptic data, targets, losses, bad samples, learning."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from cvkit.tasks.panoptic.data import IGNORE, PanopticDataset, deeplab_targets, make_synthetic
from cvkit.tasks.panoptic.metrics import id2rgb, pq_compute, read_panoptic_png
from cvkit.tasks.panoptic.models import PANOPTIC_MODELS
from cvkit.tasks.panoptic.training import deeplab_loss, evaluate_panoptic, train_panoptic
from test_foundation import assert_one_line_error, cli

from cvkit.presets import load_preset

CATS = [{"id": 7, "name": "road", "isthing": 0}, {"id": 9, "name": "car", "isthing": 1}]


def test_synthetic_scenes_are_consistent_coco_panoptic(tmp_path):
    js = make_synthetic(tmp_path, 6, size=48, seed=3)
    data = json.loads(js.read_text())
    assert [c["isthing"] for c in data["categories"]] == [0, 0, 1, 1, 1]
    for ann in data["annotations"]:
        ids = read_panoptic_png(tmp_path / "panoptic" / ann["file_name"])
        listed = {s["id"]: s for s in ann["segments_info"]}
        present, counts = np.unique(ids[ids > 0], return_counts=True)
        assert set(present.tolist()) == set(listed)
        assert all(listed[i]["area"] == c for i, c in zip(present.tolist(), counts.tolist()))
        assert any(listed[i]["category_id"] > 2 for i in listed)  # at least one thing
    # the gt against itself is perfect (panopticapi's rules in metrics.pq_compute)
    res = pq_compute(js, js, tmp_path / "panoptic", tmp_path / "panoptic")
    assert res["All"]["pq"] == pytest.approx(1.0)


def test_targets_put_a_unit_gaussian_at_the_centre_and_offsets_point_to_it():
    ids = np.full((40, 50), 1)
    ids[10:21, 20:31] = 2  # an 11x11 car centred at (15, 25)
    ids[0, 0] = 0  # a void pixel
    segs = [{"id": 1, "category_id": 7, "iscrowd": 0, "area": 0}, {"id": 2, "category_id": 9, "iscrowd": 0, "area": 0}]
    t = deeplab_targets(ids, segs, {7: 0, 9: 1}, CATS, sigma=8, small_area=200, small_weight=3)
    assert t["semantic"][15, 25] == 1 and t["semantic"][0, 1] == 0 and t["semantic"][0, 0] == IGNORE
    assert t["center"][0, 15, 25] == pytest.approx(1.0)
    assert t["center"][0, 15, 25 + 8] == pytest.approx(np.exp(-0.5), rel=1e-5)
    assert t["center"].max() == pytest.approx(1.0)
    assert tuple(t["offset"][:, 10, 20]) == (5.0, 5.0) and tuple(t["offset"][:, 20, 30]) == (-5.0, -5.0)
    assert t["offset_weights"].sum() == 121 and np.abs(t["offset"][:, ids != 2]).max() == 0
    assert t["semantic_weights"][15, 25] == 3 and t["semantic_weights"][0, 1] == 1  # small instance x3
    assert t["center_weights"][0, 0] == 0 and t["center_weights"][0, 1] == 1


class _Oracle(torch.nn.Module):
    """Returns the targets as predictions (with confident logits)."""

    def __init__(self, batch):
        super().__init__()
        self.batch = batch

    def forward(self, images):
        sem = torch.nn.functional.one_hot(self.batch["semantic"].clamp(max=4), 5).permute(0, 3, 1, 2).float() * 50
        return {"sem_seg": sem, "center": self.batch["center"], "offset": self.batch["offset"]}


def test_losses_vanish_for_perfect_predictions_and_weight_centres_200(tmp_path):
    make_synthetic(tmp_path, 2, size=32)
    ds = PanopticDataset(tmp_path, targets=True)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    losses = deeplab_loss()(_Oracle(batch), batch)
    assert set(losses) == {"loss_semantic", "loss_center", "loss_offset"}
    assert all(v.item() < 1e-6 for v in losses.values())
    off = dict(batch, center=batch["center"] + 0.1)
    assert deeplab_loss()(_Oracle(batch), off)["loss_center"].item() == pytest.approx(200 * 0.01, rel=1e-4)


def _write_dataset(root, pngs, infos, sizes=None):
    (root / "images").mkdir(parents=True)
    (root / "panoptic").mkdir()
    import cv2
    anns, images = [], []
    for i, (ids, info) in enumerate(zip(pngs, infos)):
        h, w = sizes[i] if sizes else ids.shape
        cv2.imwrite(str(root / "images" / f"{i}.png"), np.zeros((h, w, 3), np.uint8))
        cv2.imwrite(str(root / "panoptic" / f"{i}.png"), id2rgb(ids)[..., ::-1])
        images.append({"id": i, "file_name": f"{i}.png"})
        anns.append({"image_id": i, "file_name": f"{i}.png", "segments_info": info})
    (root / "panoptic.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))


def test_bad_samples_are_skipped_with_one_warning_each_and_counted(tmp_path, caplog):
    ids = np.full((8, 8), 1)
    ids[2:5, 2:5] = 2
    good = [{"id": 1, "category_id": 7, "area": 55}, {"id": 2, "category_id": 9, "area": 9}]
    pngs = [ids, ids, ids, ids, ids, ids]
    infos = [good, good[:1], good + [{"id": 3, "category_id": 9, "area": 1}],
             [good[0], {"id": 2, "category_id": 99, "area": 9}], good + [good[1]], good]
    _write_dataset(tmp_path, pngs, infos, sizes=[(8, 8)] * 5 + [(9, 8)])
    with caplog.at_level(logging.WARNING, logger="cvkit"):
        ds = PanopticDataset(tmp_path)
        assert ds.skipped == 2 and len(ds) == 4  # unknown category, id listed twice
        res = evaluate_panoptic(_Constant(ids), ds, progress=False)
    assert res["skipped"] == 5 and res["images"] == 1  # + id missing from the info, extra id, PNG size
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 5 and all("\n" not in m for m in messages)
    for needle in ("unknown category 99", "listed twice", "not in segments_info", "not in the PNG", "its image 8x9"):
        assert any(needle in m for m in messages), (needle, messages)


class _Constant(torch.nn.Module):
    """A 'model' that predicts the given panoptic map (class 0 where id 1, one car where id 2)."""

    label_divisor = 1000

    def __init__(self, ids):
        super().__init__()
        self.ids = torch.from_numpy(ids)

    def forward(self, images):
        return {}

    def panoptic(self, raw, sizes):
        return [torch.where(self.ids == 2, 1001, 0)]


def test_eval_cli_without_data_is_one_line_usage_error(tmp_path):
    assert_one_line_error(cli("eval", "panoptic", "--data", str(tmp_path / "missing"), "--weights", "none"), 2)


def test_training_lifts_pq_far_above_the_untrained_model(tmp_path):
    torch.manual_seed(0)
    make_synthetic(tmp_path / "data", 16, size=64, seed=0)
    preset = load_preset("panoptic_deeplab_synthetic")
    net = PANOPTIC_MODELS.build(preset["model"], backbone=preset["backbone"], **preset["args"])
    before = evaluate_panoptic(net, tmp_path / "data", progress=False)["All"]["pq"]
    summary = train_panoptic(preset, tmp_path / "data", work_dir=tmp_path / "run", epochs=25, batch_size=8,
                             lr=3e-3, progress=False)
    after = evaluate_panoptic(summary["model"], tmp_path / "data", progress=False)
    assert (tmp_path / "run" / "panoptic_deeplab_synthetic.safetensors").is_file()
    assert after["All"]["pq"] > before + 0.2, (before, after["All"])
    assert after["Stuff"]["pq"] > 0.5


def test_cityscapes_panoptic_layout_is_read(tmp_path):
    import shutil
    make_synthetic(tmp_path / "syn", 2, size=32)
    data = json.loads((tmp_path / "syn" / "panoptic.json").read_text())
    (tmp_path / "cs" / "gtFine" / "cityscapes_panoptic_val").mkdir(parents=True)
    (tmp_path / "cs" / "leftImg8bit" / "val" / "aachen").mkdir(parents=True)
    for im, ann in zip(data["images"], data["annotations"]):
        stem = f"aachen_000000_{im['id']:06d}"
        shutil.copy(tmp_path / "syn" / "images" / im["file_name"],
                    tmp_path / "cs" / "leftImg8bit" / "val" / "aachen" / f"{stem}_leftImg8bit.png")
        shutil.copy(tmp_path / "syn" / "panoptic" / ann["file_name"],
                    tmp_path / "cs" / "gtFine" / "cityscapes_panoptic_val" / f"{stem}_gtFine_panoptic.png")
        im["file_name"], ann["file_name"] = f"{stem}_leftImg8bit.png", f"{stem}_gtFine_panoptic.png"
    (tmp_path / "cs" / "gtFine" / "cityscapes_panoptic_val.json").write_text(json.dumps(data))
    ds = PanopticDataset(tmp_path / "cs")
    assert len(ds) == 2 and ds.skipped == 0
    assert ds[1]["gt_ids"].shape == (32, 32)
