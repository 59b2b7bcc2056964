"""`cvkit detect` and its pieces: input recipe and mapping back, class filters, rendering, any
backbone with fpn / rcnet / sepc, datasets with bad samples, and one clear line per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cvkit.tasks.detect.build import COCO_CLASSES, InputRecipe, build_composed, build_from_preset
from cvkit.tasks.detect.data import check_report, load_dataset
from cvkit.tasks.detect.draw import draw_detections
from cvkit.tasks.detect.postprocess import map_boxes_back
from cvkit.tasks.detect.synthetic import make_shapes_dataset
from cvkit.tasks.detect.task import DetectTask, preprocess_images, resolve_classes
from cvkit.tasks.detect.transforms import Expand, MinIoURandomCrop, PhotoMetricDistortion, RandomFlip
from parity import ONE_THREAD
from test_foundation import assert_one_line_error, cli

from cvkit.errors import UsageError
from cvkit.presets import load_preset, preset_weights

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "detect_shapes.jpg"



pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, 6, size=128, seed=5)
    return root


def test_keep_ratio_resize_pads_to_divisor_and_boxes_map_back_to_original_pixels():
    recipe = InputRecipe((0, 0, 0), (1, 1, 1), (128, 128), keep_ratio=True, pad_divisor=32)
    batch, metas = preprocess_images([np.zeros((90, 300, 3), np.uint8)], recipe)
    assert batch.shape == (1, 3, 64, 128)  # 300x90 -> 128x38, padded to 64 rows
    assert metas[0]["img_shape"] == (38, 128)
    original = torch.tensor([[30.0, 10.0, 150.0, 80.0]])
    sx, sy = metas[0]["scale_factor"]
    network = original * torch.tensor([sx, sy, sx, sy])
    assert torch.allclose(map_boxes_back(network, metas[0]), original, atol=1e-4)


def test_plain_resize_recipe_stretches_to_the_input_size():
    recipe = InputRecipe((0, 0, 0), (1, 1, 1), (96, 96), keep_ratio=False, pad_divisor=1)
    batch, metas = preprocess_images([np.zeros((50, 200, 3), np.uint8)], recipe)
    assert batch.shape == (1, 3, 96, 96) and metas[0]["scale_factor"] == (96 / 200, 96 / 50)


def test_classes_filter_resolves_names_and_rejects_unknown_ones():
    names = ["rectangle", "ellipse", "triangle"]
    assert resolve_classes(names, "Triangle, rectangle") == (2, 0)
    with pytest.raises(UsageError, match="no class 'elipse'.*did you mean 'ellipse'"):
        resolve_classes(names, "elipse")


def test_render_draws_boxes_in_class_colours():
    img = np.zeros((100, 100, 3), np.uint8)
    out = draw_detections(
        img, np.array([[10, 30, 60, 90]], np.float32), np.array([0.9]), np.array([1]), ["a", "b"]
    )
    assert out.shape == img.shape and out.any() and not img.any()


@pytest.mark.parametrize("neck", ["fpn", "rcnet", "sepc_lite"])
def test_any_backbone_with_fpn_rcnet_or_sepc_trains_and_predicts(neck):
    torch.manual_seed(0)
    neck_kwargs = {"out_channels": 32} if neck == "rcnet" else {"out_channels": 32, "num_outs": 3}
    model = build_composed(
        "mobilenet_v2", neck, "retinanet", 3, None, neck_kwargs, {"feat_channels": 32, "stacked_convs": 1}
    )
    x = torch.randn(2, 3, 128, 128)  # SEPC: P5 (stride 32) is 4x4, at least the 3x3 it needs
    raw = model(x)
    target = {"boxes": torch.tensor([[20.0, 30.0, 90.0, 110.0]]), "labels": torch.tensor([2])}
    losses = model.loss(raw, [target, target])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        dets = model.predict(model(x), [{"img_shape": (128, 128)}] * 2)
    assert dets[0].boxes.shape[1] == 4


def test_shipped_preset_has_pinned_weights_and_builds():
    preset = load_preset("retinanet_shapes")
    location, sha = preset_weights(preset)
    assert Path(location).is_file() and len(sha) == 64 and Path(location).stat().st_size < 2_000_000
    model, _, names, _ = build_from_preset(preset)
    assert names == ["rectangle", "ellipse", "triangle"] and model.num_classes == 3


def test_detect_cli_writes_annotated_images_json_lines_and_coco_results(tmp_path):
    res = cli("detect", str(EXAMPLE), "--out", str(tmp_path / "out"), "--conf", "0.05", env=ONE_THREAD)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "detect_shapes.jpg").is_file()
    record = json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[0])
    assert record["detections"] and {"box", "score", "label", "name"} <= set(record["detections"][0])
    coco = json.loads((tmp_path / "out" / "coco_results.json").read_text())
    assert len(coco) == len(record["detections"])
    assert set(coco[0]) == {"image_id", "category_id", "bbox", "score"}
    x1, y1, x2, y2 = record["detections"][0]["box"]
    assert coco[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.02)


def test_detect_cli_unknown_class_is_one_line(tmp_path):
    assert_one_line_error(
        cli("detect", str(EXAMPLE), "--classes", "person", "--out", str(tmp_path), env=ONE_THREAD), 2
    )


def test_checkpoint_for_another_class_count_is_one_line(tmp_path):
    model, *_ = build_from_preset({**load_preset("retinanet_shapes"), "classes": None}, num_classes=5)
    torch.save(model.state_dict(), tmp_path / "five.pth")
    res = cli(
        "detect",
        str(EXAMPLE),
        "--weights",
        str(tmp_path / "five.pth"),
        "--out",
        str(tmp_path / "o"),
        env=ONE_THREAD,
    )
    assert_one_line_error(res, 1)
    assert "has 5 classes, model has 3" in res.stderr


def _write_bad_coco(root: Path, shapes: Path) -> None:
    ann = json.loads((shapes / "annotations.json").read_text())
    (root / "images").mkdir(parents=True)
    for img in ann["images"]:
        (root / "images" / img["file_name"]).write_bytes((shapes / "images" / img["file_name"]).read_bytes())
    ann["images"] += [
        {"id": 100, "file_name": "gone.jpg", "width": 128, "height": 128},
        {"id": 101, "file_name": "../../x.jpg", "width": 128, "height": 128},
    ]
    ann["annotations"] += [
        {"id": 900, "image_id": 1, "category_id": 42, "bbox": [1, 1, 10, 10]},
        {"id": 901, "image_id": 1, "category_id": 1, "bbox": [5, 5, -4, 10]},
        {"id": 902, "image_id": 1, "category_id": 1, "bbox": [100, 100, 60, 10]},
        {"id": 903, "image_id": 555, "category_id": 1, "bbox": [1, 1, 10, 10]},
    ]
    (root / "annotations.json").write_text(json.dumps(ann))


def test_coco_bad_samples_are_skipped_counted_and_reported(tmp_path, shapes):
    _write_bad_coco(tmp_path / "bad", shapes)
    ds = load_dataset(tmp_path / "bad")
    kinds = sorted(k for k, _ in ds.problems)
    assert kinds == [
        "degenerate_box",
        "escapes_root",
        "missing_image",
        "outside_image",
        "unknown_category",
        "unknown_image",
    ]
    assert len(ds.samples) == 6 and ds.skipped == 5
    assert ds.samples[0].boxes[:, 2].max() <= 128  # the box reaching out is clipped
    report = "\n".join(check_report(ds))
    assert "file name escapes the dataset root: 1" in report and "../../x.jpg" in report
    res = cli("data", "check", str(tmp_path / "bad"), env=ONE_THREAD)
    assert res.returncode == 0 and "unknown category id: 1" in res.stdout


def test_voc_malformed_xml_is_skipped_and_counted(tmp_path, shapes):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "JPEGImages" / "a.jpg").write_bytes((shapes / "images" / "000001.jpg").read_bytes())
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>128</width><height>128</height></size>"
        "<object><name>dog</name><difficult>0</difficult><bndbox><xmin>11</xmin><ymin>21</ymin>"
        "<xmax>60</xmax><ymax>70</ymax></bndbox></object></annotation>"
    )
    (root / "Annotations" / "b.xml").write_text("<annotation><filename>b.jpg</filename")
    ds = load_dataset(root)
    assert ds.format == "voc" and ds.classes[11] == "dog" and len(ds.samples) == 1
    assert ds.samples[0].boxes.tolist() == [[10.0, 20.0, 60.0, 70.0]] and ds.samples[0].labels.tolist() == [
        11
    ]
    assert [k for k, _ in ds.problems] == ["bad_xml"]


def test_ssd_augmentations_keep_boxes_on_their_objects():
    rng = np.random.default_rng(0)
    img = np.zeros((100, 120, 3), np.float32)
    img[20:60, 30:90] = 255
    boxes, labels = np.array([[30.0, 20.0, 90.0, 60.0]], np.float32), np.array([1])
    for t in (PhotoMetricDistortion(), Expand((0, 0, 0), prob=1.0), MinIoURandomCrop(), RandomFlip(prob=1.0)):
        for _ in range(5):
            out, b, lab = t(img, boxes, labels, rng)
            assert len(b) == len(lab) >= 1
            x1, y1, x2, y2 = b[0].round().astype(int)
            if not isinstance(t, PhotoMetricDistortion):
                inner = out[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2]
                assert inner.size and inner.min() == 255


def test_backbone_neck_head_options_replace_the_preset_model_with_coco_classes():
    with pytest.warns(UserWarning, match="randomly initialised"):
        task = DetectTask.from_preset(
            load_preset("retinanet_shapes"),
            backbone="mobilenet_v2",
            neck="sepc_lite",
            head="retinanet",
            conf=0.5,
            max_det=7,
        )
    assert task.names == list(COCO_CLASSES) and task.category_ids[-1] == 90
    assert type(task.model.head).__name__ == "SepcRetinaHead" and task.recipe.size == (640, 640)
    assert task.cfg.score_thr == 0.5 and task.cfg.max_per_img == 7
    with pytest.raises(UsageError, match="unknown neck 'fpnn'"):
        DetectTask.from_preset(load_preset("retinanet_shapes"), backbone="mobilenet_v2", neck="fpnn")


def test_coco_layout_with_annotations_folder_and_split_images(tmp_path, shapes):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_bytes((shapes / "annotations.json").read_bytes())
    (shapes / "images").rename(tmp_path / "val")
    try:
        ds = load_dataset(tmp_path)
        assert len(ds.samples) == 6 and not ds.problems and ds.category_ids == [1, 2, 3]
    finally:
        (tmp_path / "val").rename(shapes / "images")
