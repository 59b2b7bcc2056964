"""RetinaNet, SSD300 and SSDLite against the mmdet 3.3 fixtures (neck, raw head outputs, anchors,
final detections as sets), SSD priors, NMS, the box coder and mapping back through a letterbox."""
import pytest
import torch
from cvkit.tasks.detect.detector import (
    DETECTORS,
    build_detector,
    retinanet_r50_fpn,
    ssd300_vgg16,
    ssdlite_mobilenet_v2,
)
from cvkit.tasks.detect.postprocess import DetectConfig, map_boxes_back, postprocess
from parity import assert_close, load_fixture

from cvkit.errors import CvkitError, UsageError
from cvkit.necks import create_neck
from cvkit.nn import FeatureSpec, count_params, deploy
from cvkit.nn.anchors import ssd_anchors
from cvkit.nn.box_coder import DeltaXYWHCoder
from cvkit.nn.nms import batched_nms, box_iou, nms
from cvkit.weights import CONVERTERS, load_state_dict_strict, load_weights

MODELS = {
    "retinanet_r50_fpn": (lambda: retinanet_r50_fpn(80), "mmdet_retinanet"),
    "ssd_300_vgg16_voc": (lambda: ssd300_vgg16(20), "mmdet_ssd"),
    "ssd_lite_mobilenetv2": (lambda: ssdlite_mobilenet_v2(80), "mmdet_ssd"),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def assert_same_detections(det, ref, tol, name):
    """Detections as a set: every official detection has its own cvkit one with the same label,
    box and score within the tolerance of `det.boxes` / `det.scores`."""
    rb, rs, rl = ref["det.boxes"], ref["det.scores"], ref["det.labels"]
    assert len(det) == len(rs), f"{name}: {len(det)} detections, official {len(rs)}"
    box_bound = tol["atol"] + tol["rtol"] * rb.abs().max().item()
    score_bound = tol["atol"] + tol["rtol"] * rs.abs().max().item()
    used = torch.zeros(len(det), dtype=torch.bool)
    for j in torch.argsort(rs, descending=True).tolist():
        box_err = (det.boxes - rb[j]).abs().max(1).values
        score_err = (det.scores - rs[j]).abs()
        ok = (det.labels == rl[j]) & ~used & (box_err <= box_bound) & (score_err <= score_bound)
        assert ok.any(), (f"{name}: official detection {j} (label {int(rl[j])}, score {rs[j].item():.6g}, "
                          f"box {rb[j].tolist()}) has no cvkit match")
        used[torch.where(ok, box_err + score_err, torch.inf).argmin()] = True


def run_fixture(stem):
    meta, ref, sd = load_fixture("heads", stem)
    build, converter = MODELS[stem]
    model = build().eval()
    load_state_dict_strict(model, CONVERTERS.get(converter)(sd))
    return meta, ref, model


@pytest.mark.parametrize("stem", list(MODELS))
def test_detector_outputs_and_detections_match_mmdet(stem):
    meta, ref, model = run_fixture(stem)
    tol, im = meta["tolerance"], meta["img_meta"]
    with torch.no_grad():
        feats = model.neck(model.backbone(ref["input"].float()))
        cls, reg = model.head(feats)
        for i, f in enumerate(feats):
            if f"neck.{i}" in ref:
                assert_close(f, ref[f"neck.{i}"], tol, f"neck.{i}")
        for i, (c, r) in enumerate(zip(cls, reg)):
            assert_close(c, ref[f"cls.{i}"], tol, f"cls.{i}")
            assert_close(r, ref[f"reg.{i}"], tol, f"reg.{i}")
        for i, a in enumerate(model.head.anchors(cls)):
            if f"anchors.{i}" in ref:
                assert_close(a, ref[f"anchors.{i}"], tol, f"anchors.{i}")
        cfg = meta["test_cfg"]
        assert model.head.test_cfg == DetectConfig(cfg["score_thr"], cfg["nms_pre"], cfg["nms"]["iou_threshold"],
                                                   cfg["max_per_img"], cfg["min_bbox_size"])
        metas = [{"img_shape": im["img_shape"], "scale_factor": im["scale_factor"], "ori_shape": im["ori_shape"]}]
        det = model.predict((cls, reg), metas)[0]
    assert_same_detections(det, ref, tol, stem)


def test_ssdlite_checkpoint_file_loads_and_deploy_form_matches_mmdet(tmp_path):
    meta, ref, sd = load_fixture("heads", "ssd_lite_mobilenetv2")
    path = tmp_path / "ssdlite.pth"
    torch.save({"meta": {"epoch": 600}, "state_dict": sd}, path)  # an mmdet checkpoint's container
    model = load_weights(ssdlite_mobilenet_v2(), path, converter=DETECTORS.meta("ssdlite")["converter"])
    fused = deploy(model.eval())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        cls, reg = fused(ref["input"].float())
    for i, (c, r) in enumerate(zip(cls, reg)):
        assert_close(c, ref[f"cls.{i}"], meta["tolerance"], f"deploy cls.{i}")
        assert_close(r, ref[f"reg.{i}"], meta["tolerance"], f"deploy reg.{i}")


def test_checkpoint_for_another_class_count_is_refused():
    _, _, sd = load_fixture("heads", "ssd_lite_mobilenetv2")
    with pytest.raises(CvkitError, match="mis-shaped"):
        load_state_dict_strict(ssdlite_mobilenet_v2(num_classes=20), CONVERTERS.get("mmdet_ssd")(sd))


@pytest.mark.parametrize("name", ["coco", "voc"])
def test_ssd300_priors_match_mmdet(name):
    meta, ref, _ = load_fixture("heads", "ssd_300_priors")
    gen = meta["generators"][name]
    cfg = gen["config"]
    anchors = ssd_anchors(cfg["strides"], cfg["ratios"], cfg["input_size"], cfg["basesize_ratio_range"])
    assert anchors.num_base_anchors == gen["num_base_priors"]
    for i, (base, priors) in enumerate(zip(anchors.base_anchors, anchors.grid_priors(meta["featmap_sizes"]))):
        assert_close(base, ref[f"{name}.base_anchors.{i}"], meta["tolerance"], f"{name}.base_anchors.{i}")
        assert_close(priors, ref[f"{name}.priors.{i}"], meta["tolerance"], f"{name}.priors.{i}")


def test_ssd_priors_need_explicit_sizes_for_other_input_sizes():
    with pytest.raises(UsageError, match="min_sizes"):
        ssd_anchors(input_size=416)


def test_ssd_extra_layers_refuse_too_small_inputs():
    neck = create_neck("ssd_extra", FeatureSpec((8, 16), (8, 16)), out_channels=(16, 16, 16, 16)).eval()
    assert [f.shape[-1] for f in neck([torch.randn(1, 8, 38, 38), torch.randn(1, 16, 19, 19)])] == [38, 19, 10, 5, 3, 1]
    with pytest.raises(CvkitError, match="too small for SSD"):
        neck([torch.randn(1, 8, 30, 30), torch.randn(1, 16, 15, 15)])


def test_official_parameter_counts():
    with torch.device("meta"):
        counts = {"retinanet": count_params(retinanet_r50_fpn()), "ssd300_voc": count_params(ssd300_vgg16(20)),
                  "ssd300_coco": count_params(ssd300_vgg16(80)), "ssdlite": count_params(ssdlite_mobilenet_v2())}
    assert counts == {"retinanet": 37_968_692, "ssd300_voc": 26_285_486, "ssd300_coco": 34_305_206,
                      "ssdlite": 4_228_788}


# ---- NMS ------------------------------------------------------------------------------------

def greedy_nms(boxes, scores, thr):
    """The textbook loop, as the torchvision/mmcv kernels run it."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i].item())  # sorted() is stable
    iou = box_iou(boxes, boxes)
    keep, dead = [], set()
    for i in order:
        if i in dead:
            continue
        keep.append(i)
        dead.update(j for j in order if iou[i, j] > thr)
    return keep


def test_nms_drops_overlaps_above_threshold_only():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 5], [20, 20, 30, 30.]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    # IoU(0,1) = 81/119 = 0.68 -> dropped; IoU(0,2) = 0.5 exactly -> kept (strictly greater drops)
    assert nms(boxes, scores, 0.5).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2, 3]


def test_nms_matches_greedy_loop_across_blocks():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(700, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(700, 2, generator=g) * 30], 1)
    scores = torch.rand(700, generator=g)
    assert nms(boxes, scores, 0.3).tolist() == greedy_nms(boxes, scores, 0.3)


def test_batched_nms_matches_greedy_loop_per_class_with_tied_scores():
    g = torch.Generator().manual_seed(1)
    xy = torch.randint(0, 100, (600, 2), generator=g).float()
    boxes = torch.cat([xy, xy + torch.randint(5, 40, (600, 2), generator=g)], 1)
    scores = torch.randint(0, 20, (600,), generator=g) / 20  # many ties
    labels = torch.randint(0, 5, (600,), generator=g)
    keep = batched_nms(boxes, scores, labels, 0.4)
    expected = []
    for c in range(5):
        idx = torch.nonzero(labels == c)[:, 0]
        expected += idx[greedy_nms(boxes[idx], scores[idx], 0.4)].tolist()
    assert sorted(keep.tolist()) == sorted(expected)
    ranked = sorted(expected, key=lambda i: (-scores[i].item(), i))
    assert keep.tolist() == ranked


def test_batched_nms_is_class_wise():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [1, 1, 11, 11.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1]
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 0]), 0.5).tolist() == [0]


def test_nms_of_nothing_is_empty():
    empty = torch.zeros(0, 4)
    for keep in (nms(empty, torch.zeros(0), 0.5), batched_nms(empty, torch.zeros(0), torch.zeros(0), 0.5)):
        assert keep.dtype == torch.long and keep.numel() == 0


def test_nms_equal_scores_keep_the_earlier_box():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60.], [50, 50, 61, 60]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]


# ---- box coder, post-processing --------------------------------------------------------------

def test_box_coder_round_trip_and_clip():
    coder = DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2))
    anchors = torch.tensor([[10, 10, 50, 30], [0, 0, 8, 8.]])
    boxes = torch.tensor([[12, 8, 60, 36], [1, 2, 5, 7.]])
    assert_close(coder.decode(anchors, coder.encode(anchors, boxes)), boxes, {"rtol": 1e-5, "atol": 1e-5}, "boxes")
    huge = coder.decode(anchors, torch.tensor([[0, 0, 100, 100.]] * 2))  # dw clamped to |log(16/1000)|
    assert torch.allclose(huge[0, 2] - huge[0, 0], torch.tensor(40 * 1000 / 16))
    clipped = coder.decode(anchors, torch.tensor([[0, 0, 1, 1.]] * 2), max_shape=(32, 48))
    assert clipped[:, 0::2].min() >= 0 and clipped[:, 0::2].max() <= 48 and clipped[:, 1::2].max() <= 32


def test_detections_map_back_through_a_letterbox():
    # a 200x100 (HxW) image letterboxed into 128x128: scale 0.64, centred with 32 px on the left
    meta = {"img_shape": (128, 128), "scale_factor": 0.64, "pad": (32, 0), "ori_shape": (200, 100)}
    boxes = torch.tensor([[32 + 6.4, 12.8, 32 + 32, 64], [0, 0, 40, 20]])
    assert_close(map_boxes_back(boxes, meta), torch.tensor([[10, 20, 50, 100], [0, 0, 12.5, 31.25]]),
                 {"rtol": 0, "atol": 1e-4}, "mapped")
    # one anchor, one confident class, zero deltas: the detection is the anchor, mapped back
    anchors = [torch.tensor([[38.4, 12.8, 64, 64], [0, 0, 20, 20]])]  # two anchors at one location
    cls = torch.tensor([-9, 5, -9, -9, -9, -9.]).reshape(1, 6, 1, 1)  # channel = anchor * 3 + class
    det = postprocess([cls], [torch.zeros(1, 8, 1, 1)], anchors, DeltaXYWHCoder(), [meta], DetectConfig(),
                      num_classes=3)[0]
    assert det.labels.tolist() == [1]
    assert_close(det.boxes, torch.tensor([[10, 20, 50, 100.]]), {"rtol": 0, "atol": 1e-4}, "det.boxes")


def test_classes_filter_keeps_only_named_classes():
    cls = torch.tensor([5.0, 4.0]).reshape(1, 2, 1, 1)  # one anchor, two classes
    anchors = [torch.tensor([[0, 0, 10, 10.]])]
    meta = [{"img_shape": (16, 16)}]
    det = postprocess([cls], [torch.zeros(1, 4, 1, 1)], anchors, DeltaXYWHCoder(), meta,
                      DetectConfig(classes=(1,)), num_classes=2)[0]
    assert det.labels.tolist() == [1]


# ---- any backbone, training losses -------------------------------------------------------------

def test_retinanet_on_another_backbone_trains():
    torch.manual_seed(0)
    model = build_detector("resnet18", "fpn", "retinanet", num_classes=3, backbone_kwargs={"out_indices": (1, 2, 3)},
                           neck_kwargs={"out_channels": 64}, head_kwargs={"feat_channels": 64})
    targets = [{"boxes": torch.tensor([[8, 8, 40, 48.]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = model.loss(model(torch.randn(2, 3, 64, 64)), targets)
    total = sum(losses.values())
    total.backward()
    assert set(losses) == {"loss_cls", "loss_box"} and torch.isfinite(total) and losses["loss_box"] > 0
    assert model.head.retina_cls.weight.grad.abs().sum() > 0


def test_ssd_loss_mines_hard_negatives():
    torch.manual_seed(0)
    model = ssdlite_mobilenet_v2(num_classes=2)
    targets = [{"boxes": torch.tensor([[20, 20, 100, 110.]]), "labels": torch.tensor([1])}]
    losses = model.loss(model(torch.randn(2, 3, 128, 128)), targets * 2)
    assert torch.isfinite(sum(losses.values())) and losses["loss_cls"] > 0 and losses["loss_box"] > 0


@pytest.mark.parametrize(("backbone", "neck", "strides"), [
    ("resnet18", "fpn", (8, 16, 32)),
    ("mobilenet_v1", "fpn", (8, 16, 32)),  # first stage at stride 2
    ("lsnet_t", "fpn", (8, 16, 32)),  # first stage at stride 8
    ("mobilenet_v1", "ssdlite_extra", (16, 32)),
])
def test_necks_read_the_same_backbone_strides_whatever_the_first_stage(backbone, neck, strides):
    from cvkit.tasks.detect.build import build_composed

    with torch.device("meta"):
        model = build_composed(backbone, neck, "ssdlite" if neck == "ssdlite_extra" else "retinanet", 3)
    assert model.backbone.feature_spec.strides == strides


def test_a_backbone_without_the_strides_a_neck_reads_is_a_usage_error():
    from cvkit.tasks.detect.build import build_composed

    with pytest.raises(UsageError, match=r"reads strides 8/16/32 but vgg16 has strides 1/2/4/8/16"):
        build_composed("vgg16", "fpn", "retinanet", 3)


def test_filter_topk_equals_a_full_stable_sort_with_ties():
    from cvkit.tasks.detect.postprocess import filter_topk

    g = torch.Generator().manual_seed(0)
    scores = (torch.rand(500, 7, generator=g) * 20).round() / 20  # many exact ties
    for k in (1, 13, 100, 5000):
        anchor_idx, labels = torch.nonzero(scores > 0.3, as_tuple=True)
        kept = scores[anchor_idx, labels]
        order = torch.sort(kept, descending=True, stable=True).indices[:k]
        got = filter_topk(scores, 0.3, k)
        for a, b in zip(got, (kept[order], labels[order], anchor_idx[order])):
            assert torch.equal(a, b)
