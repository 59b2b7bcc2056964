"""Training and evaluating segmentation models: a learning proof on synthetic scenes, dataset layouts
and bad samples, `cvkit eval segment` from a model and from label PNGs."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from cvkit.tasks.segment.build import build_model
from cvkit.tasks.segment.data import SegDataset, train_pipeline
from cvkit.tasks.segment.datasets_meta import class_set
from cvkit.tasks.segment.synthetic import write_dataset
from cvkit.tasks.segment.training import evaluate_segment, format_table
from parity import ONE_THREAD
from PIL import Image
from test_foundation import cli

from cvkit.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return write_dataset(root / "train", 48, size=64, seed=1), write_dataset(root / "val", 8, size=64, seed=2)


def test_brief_training_lifts_miou_far_above_the_untrained_model(scenes, tmp_path):
    train_dir, val_dir = scenes
    run = tmp_path / "run"
    res = cli("train", "segment", "--data", str(train_dir), "--backbone", "resnet18", "--num-classes", "4",
              "--set", "args.out_indices=[0,1,2]", "--set", "train.scale=[64,64]", "--epochs", "10", "--batch", "8",
              "--crop", "64", "--lr", "0.002", "--out", str(run), env=ONE_THREAD)
    assert res.returncode == 0, res.stderr
    assert "0 samples skipped" in res.stdout
    weights = run / "fcn8s_synthetic.safetensors"
    res = cli("eval", "segment", "--weights", str(weights), "--data", str(val_dir), "--json", "--out",
              str(tmp_path / "eval"), env=ONE_THREAD)
    assert res.returncode == 0, res.stderr
    trained = json.loads(res.stdout)
    torch.manual_seed(0)
    untrained = evaluate_segment(build_model({"model": "fcn8s", "backbone": "resnet18", "args": {
        "num_classes": 4, "out_indices": [0, 1, 2]}}), SegDataset(val_dir, 4, split="val"), progress=False).summary()
    assert untrained["mIoU"] < 25
    assert trained["mIoU"] > untrained["mIoU"] + 30 and trained["mIoU"] > 55, (trained, untrained)
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()


def test_eval_from_saved_label_pngs_equals_eval_from_the_model(scenes, tmp_path):
    _, val_dir = scenes
    res = cli("segment", str(val_dir / "images"), "--save-labels", "--no-json", "--out", str(tmp_path / "seg"),
              env=ONE_THREAD)
    assert res.returncode == 0, res.stderr
    model = cli("eval", "segment", "--data", str(val_dir), "--json", "--out", str(tmp_path / "e1"), env=ONE_THREAD)
    preds = cli("eval", "segment", "--pred", str(tmp_path / "seg" / "labels"), "--data", str(val_dir),
                "--num-classes", "4", "--json", "--out", str(tmp_path / "e2"), env=ONE_THREAD)
    assert model.returncode == 0 and preds.returncode == 0, model.stderr + preds.stderr
    a, b = json.loads(model.stdout), json.loads(preds.stdout)
    assert a["mIoU"] > 80  # the shipped weights on fresh scenes
    assert {k: a[k] for k in ("aAcc", "mIoU", "mAcc", "per_class")} == \
           {k: b[k] for k in ("aAcc", "mIoU", "mAcc", "per_class")}
    assert list(a["per_class"]) == ["background", "disc", "square", "triangle"]


def _label_png(path, array, mode="P"):
    im = Image.fromarray(array.astype(np.uint8), mode="L")
    if mode == "P":
        im = im.convert("P")
        im.putpalette(class_set("synthetic").png_palette())
    elif mode == "RGB":
        im = Image.fromarray(np.stack([array, array * 0, array], -1).astype(np.uint8))
    im.save(path)


def test_bad_samples_are_skipped_with_a_warning_and_counted(tmp_path, caplog):
    root = write_dataset(tmp_path / "d", 6, size=32, seed=3)
    (root / "labels" / "0000.png").unlink()  # missing label
    _label_png(root / "labels" / "0001.png", np.zeros((20, 32)))  # size mismatch
    bad = np.zeros((32, 32))
    bad[0, 0], bad[1, 1] = 7, 255
    _label_png(root / "labels" / "0002.png", bad)  # value beyond 4 classes (255 is fine)
    _label_png(root / "labels" / "0003.png", np.ones((32, 32)), mode="RGB")  # colour label
    grey = np.full((32, 32), 2)
    grey[:4] = 255
    Image.fromarray(grey.astype(np.uint8), mode="L").save(root / "labels" / "0004.png")  # grey is fine
    with caplog.at_level(logging.WARNING, logger="cvkit"):
        ds = SegDataset(root, 4, transforms=train_pipeline(32, (32, 32)))
    assert ds.skipped == 4 and len(ds) == 2
    text = caplog.text
    for reason in ("no label", "differs from image", "beyond the 4 classes", "RGB label"):
        assert reason in text
    sample = ds[0]  # the grey label
    assert sample["image"].shape == (3, 32, 32) and sample["label"].dtype == torch.int64
    assert set(sample["label"].unique().tolist()) <= {2, 255}


def test_voc_layout_split_file_naming_a_missing_image_is_skipped(tmp_path, caplog):
    root = tmp_path / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    for name in ("a", "b"):
        Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        _label_png(root / "SegmentationClass" / f"{name}.png", np.full((16, 24), 15))
    (root / "ImageSets/Segmentation/train.txt").write_text("a\nb\nghost\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("b\n")
    with caplog.at_level(logging.WARNING, logger="cvkit"):
        train = SegDataset(root, 21, split="train")
    assert train.layout == "voc" and len(train) == 2 and train.skipped == 1 and "ghost" in caplog.text
    assert len(SegDataset(root, 21, split="val")) == 1
    with pytest.raises(UsageError, match="beyond|no usable"):
        SegDataset(root, 4, split="val")  # person (15) is beyond 4 classes


def test_cityscapes_and_ade20k_layouts(tmp_path):
    city = tmp_path / "cityscapes"
    (city / "leftImg8bit/val/aachen").mkdir(parents=True)
    (city / "gtFine/val/aachen").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(city / "leftImg8bit/val/aachen/a_000001_leftImg8bit.png")
    Image.fromarray(np.full((8, 16), 18, np.uint8)).save(city / "gtFine/val/aachen/a_000001_gtFine_labelTrainIds.png")
    ds = SegDataset(city, 19, split="val")
    assert ds.layout == "cityscapes" and ds[0]["label"].unique().tolist() == [18]
    ade = tmp_path / "ade"
    (ade / "images/validation").mkdir(parents=True)
    (ade / "annotations/validation").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(ade / "images/validation/x.jpg")
    label = np.array([[0, 1, 150, 255] * 2] * 8, np.uint8)
    Image.fromarray(label).save(ade / "annotations/validation/x.png")
    ds = SegDataset(ade, 150, split="val")
    assert ds.layout == "ade20k" and ds[0]["label"][0].tolist() == [255, 0, 149, 255] * 2


def test_format_table_lists_every_class_and_the_summary():
    from cvkit.tasks.segment.metrics import IoUMetric

    m = IoUMetric(3)
    m.update(np.array([[0, 1], [1, 1]]), np.array([[0, 1], [2, 255]]))
    text = format_table(m, class_set(["a", "b", "c"]))
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()[3:6]]
    assert rows == [["a", "100.00", "100.00"], ["b", "50.00", "100.00"], ["c", "0.00", "0.00"]]
    assert text.splitlines()[-1] == "aAcc: {aAcc:.2f}  mIoU: {mIoU:.2f}  mAcc: {mAcc:.2f}".format(**m.summary())
