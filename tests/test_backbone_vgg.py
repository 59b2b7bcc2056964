"""VGG16 against the vgg16_tv fixture; the SSD300 form (mmdet SSDVGG) and SCNN's dilated
vgg16_bn checked through the first layer of their heads (ssd_300_vgg16_voc, scnn_vgg16)."""
import pytest
import torch
import torch.nn.functional as F
from parity import assert_close, load_fixture, synth

from cvkit.backbones import BACKBONES, backbone_names, create_backbone
from cvkit.errors import CvkitError, UsageError
from cvkit.nn import count_params, deploy
from cvkit.weights import CONVERTERS, load_state_dict_strict

backbone_names()


def _convert(name, official_sd):
    return CONVERTERS.get(BACKBONES.meta(name)["converter"])(official_sd)


def test_vgg16_taps_and_logits_match_torchvision():
    meta, ref, sd = load_fixture("backbones", "vgg16_tv")
    with torch.device("meta"):  # skip the random init of 138M weights; all are loaded below
        model = create_backbone("vgg16", num_classes=1000)
    model = model.to_empty(device="cpu")
    load_state_dict_strict(model, _convert("vgg16", sd))
    model.eval()
    with torch.no_grad():
        feats = model(ref["input"])
        logits = model.classify(ref["input"])
    assert len(feats) == 5
    for i, f in enumerate(feats):
        assert_close(f, ref[f"features.{i}"], meta["tolerance"], f"features.{i}")
    assert_close(logits, ref["logits"], meta["tolerance"], "logits")
    # the dense form takes the classification checkpoint, its classifier ignored
    dense = create_backbone("vgg16", out_indices=(2,))
    load_state_dict_strict(dense, _convert("vgg16", sd))
    assert len(dense.features) == 16  # built only up to the stride-4 tap
    with torch.no_grad():
        assert_close(dense.eval()(ref["input"])[0], ref["features.2"], meta["tolerance"], "dense features.2")


def test_vgg16_ssd_loads_mmdet_layout_and_matches_ssd300_head():
    """SSDVGG keys `backbone.features.*`; cls.0 = conv(L2Norm(conv4_3)), cls.1 = conv(fc7)."""
    meta, ref, _ = load_fixture("heads", "ssd_300_vgg16_voc")
    keys = ("backbone.", "neck.l2_norm.", "bbox_head.cls_convs.0.", "bbox_head.cls_convs.1.")
    sd = synth([row for row in meta["layout"] if row[0].startswith(keys)], meta["seed"])
    model = create_backbone("ssd_vgg16")  # alias
    load_state_dict_strict(model, _convert("vgg16_ssd", sd))
    model.eval()
    with torch.no_grad():
        conv4_3, fc7 = model(ref["input"].float())
        norm = conv4_3 / (conv4_3.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) * sd["neck.l2_norm.weight"][:, None, None]
        cls0 = F.conv2d(norm, sd["bbox_head.cls_convs.0.0.weight"], sd["bbox_head.cls_convs.0.0.bias"], padding=1)
        cls1 = F.conv2d(fc7, sd["bbox_head.cls_convs.1.0.weight"], sd["bbox_head.cls_convs.1.0.bias"], padding=1)
    assert model.feature_spec.channels == (512, 1024) and model.feature_spec.strides == (8, 16)
    assert_close(cls0, ref["cls.0"], meta["tolerance"], "cls.0")
    assert_close(cls1, ref["cls.1"], meta["tolerance"], "cls.1")


def _bn(x, sd, p, eps=1e-5):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                        sd[f"{p}.bias"], False, 0.0, eps)


def _scnn_pass(x, weight, dim, reverse):
    """SCNN message passing along `dim` (2 rows, 3 columns): S'_i = S_i + relu(conv(S'_{i-1}))."""
    slices = list(x.unbind(dim))
    if reverse:
        slices = slices[::-1]
    pad = (0, 4) if dim == 2 else (4, 0)
    out = [slices[0]]
    for s in slices[1:]:
        prev = out[-1].unsqueeze(dim)
        out.append(s + F.relu(F.conv2d(prev, weight, padding=pad)).squeeze(dim))
    return torch.stack(out[::-1] if reverse else out, dim)


def test_vgg16_bn_scnn_loads_port_layout_and_matches_scnn_logits_and_deploy():
    meta, ref, _ = load_fixture("heads", "scnn_vgg16")
    sd = synth([row for row in meta["layout"] if not row[0].startswith(("fc.", "ce_loss."))], meta["seed"])
    model = create_backbone("vgg16_bn_scnn")
    load_state_dict_strict(model, _convert("vgg16_bn_scnn", sd))
    model.eval()
    assert model.feature_spec.strides == (8,)
    with torch.no_grad():
        for form, net in (("", model), ("deploy ", deploy(model))):
            (x,) = net(ref["input"])
            x = F.relu(_bn(F.conv2d(x, sd["layer1.0.weight"], padding=4, dilation=4), sd, "layer1.1"))
            x = F.relu(_bn(F.conv2d(x, sd["layer1.3.weight"]), sd, "layer1.4"))
            for name, dim, rev in (("up_down", 2, False), ("down_up", 2, True), ("left_right", 3, False),
                                   ("right_left", 3, True)):
                x = _scnn_pass(x, sd[f"message_passing.{name}.weight"], dim, rev)
            logits = F.conv2d(x, sd["layer2.1.weight"], sd["layer2.1.bias"])
            assert_close(logits, ref["seg_logits_s8"], meta["tolerance"], f"{form}seg_logits_s8")


@pytest.mark.parametrize("name,kwargs,count", [
    ("vgg16", {"num_classes": 1000}, 138_357_544), ("vgg16", {}, 14_714_688),
    ("vgg16_bn", {"num_classes": 1000}, 138_365_992), ("vgg16_bn", {}, 14_723_136),
    # SSDVGG = features + fc6 (3x3x512x1024) + fc7 (1x1x1024x1024), all with bias
    ("vgg16_ssd", {}, 14_714_688 + 4_719_616 + 1_049_600)])
def test_vgg_param_counts_match_official(name, kwargs, count):
    with torch.device("meta"):
        assert count_params(create_backbone(name, **kwargs)) == count


def test_vgg16_feature_spec_matches_outputs_on_non_square_input():
    model = create_backbone("vgg16").eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 37, 50))
    assert [f.shape[1] for f in feats] == list(model.feature_spec.channels) == [64, 128, 256, 512, 512]
    assert [tuple(f.shape[-2:]) for f in feats] == [(37, 50), (18, 25), (9, 12), (4, 6), (2, 3)]
    assert model.feature_spec.strides == (1, 2, 4, 8, 16)


def test_vgg16_too_small_input_raises_and_ssd_form_has_no_classifier():
    with pytest.raises(CvkitError, match="at least 16"):
        create_backbone("vgg16", out_indices=(4,))(torch.randn(1, 3, 15, 64))
    with torch.device("meta"):
        classifier = create_backbone("vgg16", num_classes=10)
    with pytest.raises(CvkitError, match="at least 32"):
        classifier.classify(torch.randn(1, 3, 31, 64))
    with pytest.raises(UsageError):
        create_backbone("vgg16_ssd", num_classes=10)
