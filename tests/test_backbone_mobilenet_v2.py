"""MobileNetV2 against the mobilenet_v2_tv fixture; mmdet's SSDLite layout (BN eps 1e-3) checked
through the first layer of the SSDLite head (ssd_lite_mobilenetv2)."""
import torch
import torch.nn.functional as F
from parity import assert_close, load_fixture, synth

from cvkit.backbones import BACKBONES, backbone_names, create_backbone
from cvkit.nn import count_params, deploy
from cvkit.weights import CONVERTERS, load_state_dict_strict

backbone_names()


def _load(name, official_sd, **kwargs):
    model = create_backbone(name, **kwargs)
    load_state_dict_strict(model, CONVERTERS.get(BACKBONES.meta(name)["converter"])(official_sd))
    return model.eval()


def test_mobilenet_v2_taps_final_conv_logits_and_deploy_match_torchvision():
    meta, ref, sd = load_fixture("backbones", "mobilenet_v2_tv")
    model = _load("mobilenet_v2", sd, out_indices=(0, 1, 2, 3, 4), num_classes=1000)
    names = ["features.0", "features.1", "features.2", "features.3", "final_conv"]
    with torch.no_grad():
        for form, net in (("", model), ("deploy ", deploy(model))):
            for name, f in zip(names, net(ref["input"])):
                assert_close(f, ref[name], meta["tolerance"], form + name)
            assert_close(net.classify(ref["input"]), ref["logits"], meta["tolerance"], form + "logits")


def test_mobilenet_v2_dense_form_ignores_head_and_final_conv():
    meta, ref, sd = load_fixture("backbones", "mobilenet_v2_tv")
    model = _load("mobilenetv2", sd)  # alias; default taps 0-3
    assert len(model.features) == 18
    with torch.no_grad():
        feats = model(ref["input"])
    for i, f in enumerate(feats):
        assert_close(f, ref[f"features.{i}"], meta["tolerance"], f"features.{i}")


def _dw_head(x, sd, p):
    """SSDLite head branch: dw 3x3 ConvModule (BN eps 1e-3, ReLU6), then a 1x1 conv with bias."""
    x = F.conv2d(x, sd[f"{p}.0.conv.weight"], padding=1, groups=x.shape[1])
    x = F.batch_norm(x, sd[f"{p}.0.bn.running_mean"], sd[f"{p}.0.bn.running_var"], sd[f"{p}.0.bn.weight"],
                     sd[f"{p}.0.bn.bias"], False, 0.0, 1e-3)
    return F.conv2d(F.relu6(x), sd[f"{p}.1.weight"], sd[f"{p}.1.bias"])


def test_mobilenet_v2_ssdlite_loads_mmdet_layout_and_matches_ssdlite_head():
    meta, ref, _ = load_fixture("heads", "ssd_lite_mobilenetv2")
    keys = ("backbone.", "bbox_head.cls_convs.0.", "bbox_head.reg_convs.1.")
    sd = synth([row for row in meta["layout"] if row[0].startswith(keys)], meta["seed"])
    model = _load("mobilenet_v2_ssdlite", sd)
    assert model.feature_spec.channels == (96, 1280) and model.feature_spec.strides == (16, 32)
    with torch.no_grad():
        for form, net in (("", model), ("deploy ", deploy(model))):
            c4, c5 = net(ref["input"].float())
            assert_close(_dw_head(c4, sd, "bbox_head.cls_convs.0"), ref["cls.0"], meta["tolerance"], form + "cls.0")
            assert_close(_dw_head(c5, sd, "bbox_head.reg_convs.1"), ref["reg.1"], meta["tolerance"], form + "reg.1")


def test_mobilenet_v2_ssdlite_weights_file_loads_through_registered_converter(tmp_path):
    meta, _, _ = load_fixture("heads", "ssd_lite_mobilenetv2")
    sd = synth([row for row in meta["layout"] if row[0].startswith(("backbone.", "neck."))], meta["seed"])
    path = tmp_path / "ssdlite.pth"
    torch.save({"state_dict": sd, "meta": {"epoch": 1}}, path)
    model = create_backbone("mobilenet_v2_mmdet", weights=str(path))  # alias; neck keys dropped
    deployed = deploy(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())


def test_mobilenet_v2_param_counts_match_torchvision():
    assert count_params(create_backbone("mobilenet_v2", num_classes=1000)) == 3_504_872
    assert count_params(create_backbone("mobilenet_v2", out_indices=(0, 1, 2, 3, 4))) == 2_223_872


def test_mobilenet_v2_feature_spec_matches_outputs_on_odd_non_square_input():
    model = create_backbone("mobilenet_v2", out_indices=(0, 2, 4)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 50, 75))
    assert [f.shape[1] for f in feats] == list(model.feature_spec.channels) == [24, 96, 1280]
    # sizes round as in torchvision: 50x75 -> 13x19 (s4) -> 4x5 (s16) -> 2x3 (s32)
    assert [tuple(f.shape[-2:]) for f in feats] == [(13, 19), (4, 5), (2, 3)]
    assert model.feature_spec.strides == (4, 16, 32)
