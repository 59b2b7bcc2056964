"""`cvkit segment`: overlays, palette label PNGs, JSON shares, whole vs sliding-window inference, and one
clear line for each kind of bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cvkit.tasks.segment.build import build_model, load_segment_weights
from cvkit.tasks.segment.datasets_meta import SYNTHETIC_PALETTE, bitmap_palette, class_set
from cvkit.tasks.segment.inference import slide_labels, whole_labels
from cvkit.tasks.segment.synthetic import make_scene
from cvkit.tasks.segment.task import SegmentTask
from parity import ONE_THREAD
from PIL import Image
from test_foundation import assert_one_line_error, cli
from torch import nn

import cvkit
from cvkit.errors import CvkitError, UsageError
from cvkit.media import Frame

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCENE = EXAMPLES / "segment_scene.png"


pytestmark = pytest.mark.usefixtures("one_thread")


def segment_array(task, img):
    batch, metas = task.preprocess([Frame(image=img, source="t", index=0, timestamp=None, meta={})])
    return task.postprocess(task.forward(batch), metas)[0]


def random_fcn(num_classes=4):
    """A small FCN-8s with random score layers (the paper's init is zero, which predicts one class)."""
    torch.manual_seed(0)
    model = build_model({"model": "fcn8s", "backbone": "mobilenet_v2",
                         "args": {"num_classes": num_classes, "out_indices": [0, 1, 2]}})
    for conv in model.head.score:
        nn.init.normal_(conv.weight, std=0.05)
    return model.eval()


def test_cli_writes_overlay_palette_labels_and_class_shares(tmp_path):
    out = tmp_path / "out"
    res = cli("segment", str(SCENE), "--save-labels", "--out", str(out), env=ONE_THREAD)
    assert res.returncode == 0, res.stderr
    assert "1 frames" in res.stdout
    overlay = np.asarray(Image.open(out / "segment_scene.jpg"))
    assert overlay.shape == (192, 256, 3)
    png = Image.open(out / "labels" / "segment_scene.png")
    assert png.mode == "P" and png.size == (256, 192)
    assert np.array_equal(np.array(png.getpalette()[:12]).reshape(4, 3), np.array(SYNTHETIC_PALETTE))
    labels = np.asarray(png)
    _, truth = make_scene(np.random.default_rng(6), 192, 256)  # how the example was drawn
    assert (labels == truth).mean() > 0.95
    record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert set(record["classes"]) <= {"background", "disc", "square", "triangle"}
    assert abs(sum(record["classes"].values()) - 1) < 1e-3
    assert record["classes"]["background"] == pytest.approx((labels == 0).mean(), abs=1e-4)


def test_slide_equals_whole_when_the_crop_covers_the_image():
    model = random_fcn()
    x = torch.randn(2, 3, 70, 90)
    with torch.inference_mode():
        assert torch.equal(slide_labels(model, x, (96, 96), (64, 64)), whole_labels(model, x))
        assert torch.equal(slide_labels(model, x, (70, 90), (50, 50)), whole_labels(model, x))


def reference_slide(model, x, crop, stride):
    """mmseg's slide_inference with a full-size canvas of summed logits."""
    n, _, h, w = x.shape
    rows = max(h - crop[0] + stride[0] - 1, 0) // stride[0] + 1
    cols = max(w - crop[1] + stride[1] - 1, 0) // stride[1] + 1
    preds, count = None, torch.zeros(1, 1, h, w)
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride[0] + crop[0], h), min(c * stride[1] + crop[1], w)
            y1, x1 = max(y2 - crop[0], 0), max(x2 - crop[1], 0)
            logit = model(x[:, :, y1:y2, x1:x2])["out"]
            preds = logit.new_zeros(n, logit.shape[1], h, w) if preds is None else preds
            preds += F.pad(logit, (x1, w - x2, y1, h - y2))
            count[:, :, y1:y2, x1:x2] += 1
    return (preds / count).argmax(1)


class PixelNet(nn.Module):
    """A cheap stand-in model: 3x3 conv logits, so windows disagree near their borders."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x):
        return {"out": self.conv(x)}


def test_slide_on_a_large_image_matches_mmseg_slide_inference():
    model = random_fcn()
    x = torch.randn(1, 3, 150, 230)
    with torch.inference_mode():
        assert torch.equal(slide_labels(model, x, (64, 64), (43, 43)), reference_slide(model, x, (64, 64), (43, 43)))
    big = torch.randn(1, 3, 700, 1100)
    with torch.inference_mode():
        ours = slide_labels(PixelNet(), big, (256, 256), (171, 171))
        assert torch.equal(ours, reference_slide(PixelNet(), big, (256, 256), (171, 171)))


def test_slide_task_through_preprocess_matches_whole_on_a_small_frame():
    base = SegmentTask(random_fcn(), classes=class_set("synthetic"))
    slide = SegmentTask(base.model, classes=base.classes, mode="slide", crop=256, stride=128)
    img = (np.random.default_rng(0).random((100, 140, 3)) * 255).astype(np.uint8)
    assert np.array_equal(segment_array(base, img), segment_array(slide, img))


def test_dataset_palettes_and_names():
    assert class_set("voc").num_classes == 21 and class_set("cityscapes").num_classes == 19
    assert class_set("ade20k").num_classes == 150
    assert tuple(class_set("voc").palette[15]) == (192, 128, 128)  # person
    assert tuple(class_set("cityscapes").palette[0]) == (128, 64, 128)  # road
    custom = class_set(["sky", "ground"])
    assert custom.classes == ("sky", "ground") and np.array_equal(custom.palette, bitmap_palette(2))
    with pytest.raises(UsageError, match="closest|did you mean|valid"):
        class_set("vocc")


def test_checkpoint_for_another_class_count_is_refused_or_reinitialised(tmp_path):
    path = tmp_path / "five.pth"
    torch.save(random_fcn(num_classes=5).state_dict(), path)
    model = random_fcn(num_classes=4)
    with pytest.raises(CvkitError, match="is for 5 classes.*--num-classes"):
        load_segment_weights(model, str(path))
    before = model.head.score[0].weight.clone()
    with pytest.warns(UserWarning, match="re-initialised"):
        load_segment_weights(model, str(path), reinit_classifier=True)
    assert torch.equal(model.head.score[0].weight, before)


@pytest.mark.parametrize("preset, options, message", [
    ("fcn8s_synthetic", {"backbone": "resnet5"}, "resnet"),
    ("fcn8s_synthetic", {"backbone": "mobilenet_v2", "output_stride": 8}, "no dilated form"),
    ("fcn8s_synthetic", {"output_stride": 12}, "8, 16 or 32"),
    ("fcn_resnet50_coco", {"backbone": "resnet18"}, "own backbone"),
    ("fcn8s_synthetic", {"mode": "slide", "crop": 64, "stride": 128}, "larger than --crop"),
    ("fcn8s_synthetic", {"mode": "tiles"}, "--mode"),
    ("fcn8s_synthetic", {"num_classes": 0}, "--num-classes"),
])
def test_bad_options_are_usage_errors(preset, options, message):
    with pytest.raises(UsageError, match=message):
        cvkit.load_task(preset, task="segment", weights="none", **options)


def test_cli_bad_backbone_and_output_stride_are_one_line_errors():
    assert_one_line_error(cli("segment", str(SCENE), "--backbone", "resnet5", "--no-save", env=ONE_THREAD), 2)
    assert_one_line_error(cli("segment", str(SCENE), "--backbone", "resnet18", "--output-stride", "8",
                              "--no-save", env=ONE_THREAD), 2)


def test_torchvision_preset_is_a_21_class_voc_task_pinned_by_its_hash_prefix():
    preset = cvkit.load_preset("fcn_resnet50_coco")
    assert preset["weights"]["url"].endswith("fcn_resnet50_coco-1167a1af.pth")
    assert preset["weights"]["sha256"] == "1167a1af"
    with pytest.warns(UserWarning, match="randomly initialised"):
        task = cvkit.load_task("fcn_resnet50_coco", weights="none")
    assert task.classes.classes[15] == "person" and task.classes.num_classes == 21
    assert not any(k.startswith("aux_classifier.") for k in task.model.state_dict())


def test_label_pngs_never_overwrite_existing_files(tmp_path):
    task = SegmentTask(random_fcn(), classes=class_set("synthetic"), label_dir=tmp_path)
    frame = Frame(image=np.zeros((8, 8, 3), np.uint8), source="a.png", meta={"rel": "a.png", "kind": "image"})
    labels = np.zeros((8, 8), np.uint8)
    assert task.save_labels(frame, labels) == tmp_path / "a.png"
    with pytest.raises(CvkitError, match="refusing to overwrite"):
        task.save_labels(frame, labels)
