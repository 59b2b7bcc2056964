"""`cvkit export --nms`: detection with decoding and NMS in the ONNX graph (final boxes), its
detections against the PyTorch task's, and running such a file with `cvkit detect`.

Tolerances: the same detections (count, labels, order) with boxes within 0.01 px and scores within
1e-4 of PyTorch's (onnxruntime's convolutions differ from PyTorch's in the last bits of fp32; the
export's own check allows 1e-3 x the largest output).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_export import cvkit_export
from test_foundation import assert_one_line_error, cli
from torch import nn

import cvkit
from cvkit.errors import UsageError
from cvkit.export import export, export_module, load_exported
from cvkit.media import Frame
from cvkit.nn.nms import nms_mask
from cvkit.presets import validate
from cvkit.weights import random_init_expected

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "detect_shapes.jpg"
BOX_ATOL, SCORE_ATOL = 0.01, 1e-4
R18_FPN = {"name": "r18_fpn_retinanet", "task": "detect", "model": "detector", "backbone": "resnet18",
           "neck": "fpn", "head": "retinanet", "imgsz": 128,
           "args": {"neck_kwargs": {"out_channels": 64},
                    "head_kwargs": {"feat_channels": 64, "stacked_convs": 1}}}
SSDLITE = {"name": "mnv2_ssdlite", "task": "detect", "model": "detector", "backbone": "mobilenet_v2",
           "neck": "ssdlite_extra", "head": "ssdlite", "imgsz": 160}


def frame(image: np.ndarray) -> Frame:
    return Frame(image=np.ascontiguousarray(image), source="t.jpg", index=0, timestamp=None,
                 meta={"kind": "image"})


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def detect(task, images: list[np.ndarray]):
    batch, metas = task.preprocess([frame(i) for i in images])
    with torch.no_grad():
        return task.postprocess(task.forward(batch), metas)


def assert_same_detections(out, ref, name):
    assert len(out) == len(ref), f"{name}: {len(out)} detections, PyTorch {len(ref)}"
    assert np.array_equal(out.labels, ref.labels), f"{name}: labels {out.labels} != {ref.labels}"
    box_err = float(np.abs(out.boxes - ref.boxes).max(initial=0))
    score_err = float(np.abs(out.scores - ref.scores).max(initial=0))
    assert box_err <= BOX_ATOL, f"{name}: boxes off by {box_err:.3g} px"
    assert score_err <= SCORE_ATOL, f"{name}: scores off by {score_err:.3g}"


def random_task(preset: dict, **options):
    """The detect task of `preset` with seeded random weights."""
    from cvkit.tasks.detect.task import DetectTask

    torch.manual_seed(0)
    with random_init_expected():
        return DetectTask.from_preset(validate(preset, "test"), weights="none", **options)


def spread_retinanet(task):
    """Class logits spread over a few units: at the prior init every score is ~0.01, thousands of
    near-ties that no two runtimes rank alike."""
    torch.manual_seed(1)
    nn.init.normal_(task.model.head.retina_cls.weight, std=0.4)
    return task


def spread_ssdlite(task):
    """Kaiming-initialised convolutions and unit BN scales: at its own init MobileNetV2's features
    are ~1e-6, so every softmax is uniform."""
    torch.manual_seed(1)
    for m in task.model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
    return task


# -- the NMS operator ------------------------------------------------------------------------------

class _ClassWiseNMS(nn.Module):
    def forward(self, boxes, scores, labels):
        return nms_mask(boxes, scores, labels, iou_threshold=0.5, score_threshold=0.1, max_keep=3)


def test_nms_in_onnxruntime_keeps_what_pytorch_keeps_at_the_thresholds(tmp_path):
    boxes = torch.tensor([[[0, 0, 4, 1], [0, 0, 2, 1], [0, 0, 4, 1], [0, 0, 4, 1], [5, 5, 6, 6],
                           [8, 8, 9, 9]]] * 2, dtype=torch.float32)
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.1, 0.5], [0.1] * 6])
    labels = torch.tensor([[0, 0, 0, 1, 0, 2]] * 2)
    # IoU exactly 0.5 stays, IoU 1 in the same class goes, another class stays, a score equal to the
    # threshold goes, the 4th survivor is past max_keep; nothing above the threshold in image 2.
    expected = torch.tensor([[True, True, False, True, False, False], [False] * 6])
    export_module(_ClassWiseNMS(), (boxes, scores, labels), tmp_path / "nms.onnx")
    graph = onnx.load(str(tmp_path / "nms.onnx")).graph
    assert "NonMaxSuppression" in {n.op_type for n in graph.node}
    assert torch.equal(_ClassWiseNMS()(boxes, scores, labels), expected)
    assert torch.equal(load_exported(tmp_path / "nms.onnx")(boxes, scores, labels), expected)


# -- parity with the PyTorch task ------------------------------------------------------------------

def test_shipped_retinanet_with_nms_in_onnx_detects_what_pytorch_detects(tmp_path):
    task = cvkit.load_task("retinanet_shapes")
    report = export(task, "onnx", tmp_path / "shapes.onnx", nms=True, dynamic=True)
    meta = report.metadata
    assert meta["nms"] is True and meta["outputs"] == ["num_dets", "boxes", "scores", "labels"]
    assert meta["postprocess"]["score_thr"] == 0.35  # the preset's conf, in the graph
    assert meta["output_layout"].startswith("num_dets (B,) int64")
    onnx_task = cvkit.load_task("ignored", weights=str(report.path))
    image = np.asarray(Image.open(EXAMPLE).convert("RGB"))  # 256x256: fills the 128x128 input at scale 0.5
    letterboxed = [image[:180], image[:, :200]]  # 96x128 and 128x128 inputs, padded below / at the right
    for name, images in (("example", [image]), ("batch of 2", [image, image[::-1].copy()]),
                         ("letterbox rows", letterboxed[:1]), ("letterbox columns", letterboxed[1:])):
        refs, outs = detect(task, images), detect(onnx_task, images)
        for i, (out, ref) in enumerate(zip(outs, refs)):
            assert len(ref) >= 3, f"{name}: the shipped model should find the shapes"
            assert_same_detections(out, ref, f"{name} [{i}]")
    # A higher --conf and a lower --max-det filter the file's detections exactly as PyTorch's.
    strict = {"conf": 0.6, "max_det": 2}
    ref = detect(cvkit.load_task("retinanet_shapes", **strict), [image])[0]
    out = detect(cvkit.load_task("ignored", weights=str(report.path), **strict), [image])[0]
    assert len(ref) == 2
    assert_same_detections(out, ref, "--conf 0.6 --max-det 2")


def test_resnet18_fpn_file_keeps_max_det_when_more_boxes_survive_nms(tmp_path):
    task = spread_retinanet(random_task(R18_FPN))
    image = noise(128, 128)
    batch, metas = task.preprocess([frame(image)])
    with torch.no_grad():
        survivors = task.model.predict(task.forward(batch), metas, replace(task.cfg, max_per_img=10**6))[0]
    assert len(survivors) > 2 * task.cfg.max_per_img == 200
    report = export(task, "onnx", tmp_path / "r18.onnx", nms=True)
    ref, out = detect(task, [image])[0], detect(cvkit.load_task("x", weights=str(report.path)), [image])[0]
    assert len(ref) == task.cfg.max_per_img
    assert_same_detections(out, ref, "resnet18 fpn")


def test_ssdlite_file_matches_pytorch_softmax_detections(tmp_path):
    task = spread_ssdlite(random_task(SSDLITE, conf=0.5, max_det=50))
    report = export(task, "onnx", tmp_path / "ssdlite.onnx", nms=True)
    assert report.metadata["postprocess"] == {"score_thr": 0.5, "nms_pre": 1000, "iou_threshold": 0.45,
                                              "max_per_img": 50, "min_bbox_size": 0.0, "classes": None}
    onnx_task = cvkit.load_task("x", weights=str(report.path))
    image = noise(160, 160)
    ref, out = detect(task, [image])[0], detect(onnx_task, [image])[0]
    assert len(ref) == 50  # more survive: max_det binds
    assert_same_detections(out, ref, "ssdlite")


def test_file_with_no_detections_outputs_zero_rows(tmp_path):
    task = random_task(R18_FPN)  # the prior init: every score ~0.01, below the 0.05 threshold
    report = export(task, "onnx", tmp_path / "none.onnx", nms=True)
    batch, _ = task.preprocess([frame(noise(128, 128))])
    raw = load_exported(report.path)(batch)
    assert raw["num_dets"].tolist() == [0] and not raw["boxes"].any() and not raw["labels"].any()
    assert len(detect(cvkit.load_task("x", weights=str(report.path)), [noise(128, 128)])[0]) == 0


# -- command line and bad input --------------------------------------------------------------------

def test_cli_export_with_nms_then_detect_writes_the_pytorch_predictions(tmp_path):
    res = cvkit_export("--preset", "retinanet_shapes", "--format", "onnx", "--nms", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    path = tmp_path / "retinanet_shapes.onnx"
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["nms"] == "true" and props["output_layout"].startswith("num_dets")
    assert json.loads(props["cvkit"])["postprocess"]["iou_threshold"] == 0.5
    ref = cli("detect", str(EXAMPLE), "--out", str(tmp_path / "torch"))
    out = cli("detect", str(EXAMPLE), "--weights", str(path), "--out", str(tmp_path / "ort"))
    assert ref.returncode == 0 and out.returncode == 0, (ref.stderr, out.stderr)
    assert (tmp_path / "ort" / "detect_shapes.jpg").is_file()
    refs, outs = ([json.loads((tmp_path / d / "predictions.jsonl").read_text())["detections"]
                   for d in ("torch", "ort")])
    assert refs and [d["name"] for d in outs] == [d["name"] for d in refs]
    for o, r in zip(outs, refs):
        assert np.abs(np.subtract(o["box"], r["box"])).max() <= BOX_ATOL + 0.01  # JSON rounds to 0.01
    coco = [json.loads((tmp_path / d / "coco_results.json").read_text()) for d in ("torch", "ort")]
    assert len(coco[0]) == len(coco[1]) == len(refs)
    res = cli("detect", str(EXAMPLE), "--weights", str(path), "--conf", "0.1", "--out", str(tmp_path / "low"))
    assert_one_line_error(res, 2)
    assert "keeping scores above 0.35; export it again with --set args.conf=0.1" in res.stderr


def test_nms_for_torchscript_or_a_task_without_boxes_is_a_usage_error():
    assert_one_line_error(cvkit_export("--preset", "retinanet_shapes", "--format", "torchscript", "--nms"), 2)
    with random_init_expected(), pytest.raises(UsageError, match="the upscale task has no in-graph decoding and NMS"):
        export("espcn_x3", "onnx", weights="none", nms=True)
