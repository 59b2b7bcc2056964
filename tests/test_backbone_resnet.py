"""ResNet (torchvision v1.5) against the resnet18_tv / resnet50_tv fixtures, plus the mmdet layout
(retinanet_r50_fpn) and the dilated form (fcn_resnet50_tv) through one layer of their heads."""
import pytest
import torch
import torch.nn.functional as F
from parity import assert_close, load_fixture, synth

from cvkit.backbones import BACKBONES, backbone_names, create_backbone
from cvkit.errors import UsageError
from cvkit.nn import count_params, deploy
from cvkit.weights import CONVERTERS, load_state_dict_strict

backbone_names()


def _load(name, official_sd, **kwargs):
    model = create_backbone(name, **kwargs)
    load_state_dict_strict(model, CONVERTERS.get(BACKBONES.meta(name)["converter"])(official_sd))
    return model.eval()


def _layout(meta, prefixes):
    return [row for row in meta["layout"] if row[0].startswith(prefixes)]


@pytest.mark.parametrize("stem,name", [("resnet18_tv", "resnet18"), ("resnet50_tv", "resnet50")])
def test_resnet_classifier_and_deploy_match_torchvision(stem, name):
    meta, ref, sd = load_fixture("backbones", stem)
    model = _load(name, sd, num_classes=1000)
    deployed = deploy(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())
    with torch.no_grad():
        for form, net in (("", model), ("deploy ", deployed)):
            feats = net(ref["input"])
            for i, f in enumerate(feats):
                assert_close(f, ref[f"features.{i}"], meta["tolerance"], f"{form}features.{i}")
            assert_close(net.classify(ref["input"]), ref["logits"], meta["tolerance"], f"{form}logits")


def test_resnet18_dense_form_loads_classifier_checkpoint_and_matches():
    meta, ref, sd = load_fixture("backbones", "resnet18_tv")
    model = _load("resnet18", sd, out_indices=(1, 2))
    assert not hasattr(model, "fc") and not hasattr(model, "layer4")
    with torch.no_grad():
        feats = model(ref["input"])
    assert len(feats) == 2
    assert_close(feats[0], ref["features.1"], meta["tolerance"], "features.1")
    assert_close(feats[1], ref["features.2"], meta["tolerance"], "features.2")


def test_resnet50_loads_mmdet_layout_and_matches_retinanet_p6():
    """mmdet's pytorch-style ResNet keys (`backbone.` prefix, no fc); RetinaNet's P6 is one 3x3/2
    conv on C5, so `neck.3` pins C5."""
    meta, ref, _ = load_fixture("heads", "retinanet_r50_fpn")
    sd = synth(_layout(meta, ("backbone.", "neck.fpn_convs.3.")), meta["seed"])
    model = _load("resnet50", sd)
    with torch.no_grad():
        c5 = model(ref["input"])[3]
        p6 = F.conv2d(c5, sd["neck.fpn_convs.3.conv.weight"], sd["neck.fpn_convs.3.conv.bias"], 2, 1)
    assert_close(p6, ref["neck.3"], meta["tolerance"], "neck.3")


def _fcn_head(x, sd, prefix, size):
    bn = sd[f"{prefix}.1.running_mean"], sd[f"{prefix}.1.running_var"], sd[f"{prefix}.1.weight"]
    x = F.conv2d(x, sd[f"{prefix}.0.weight"], padding=1)
    x = F.relu(F.batch_norm(x, bn[0], bn[1], bn[2], sd[f"{prefix}.1.bias"], False, 0.0, 1e-5))
    x = F.conv2d(x, sd[f"{prefix}.4.weight"], sd[f"{prefix}.4.bias"])
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def test_resnet50_dilated_matches_torchvision_fcn():
    meta, ref, _ = load_fixture("heads", "fcn_resnet50_tv")
    sd = synth(meta["layout"], meta["seed"])
    model = _load("resnet50", sd, out_indices=(2, 3), replace_stride_with_dilation=(False, True, True))
    assert model.feature_spec.strides == (8, 8)
    x = ref["input"]
    with torch.no_grad():
        c4, c5 = model(x)
        assert_close(_fcn_head(c5, sd, "classifier", x.shape[-2:]), ref["out"], meta["tolerance"], "out")
        assert_close(_fcn_head(c4, sd, "aux_classifier", x.shape[-2:]), ref["aux"], meta["tolerance"], "aux")


@pytest.mark.parametrize("name,total,no_fc", [
    ("resnet18", 11_689_512, 11_176_512), ("resnet34", 21_797_672, 21_284_672),
    ("resnet50", 25_557_032, 23_508_032), ("resnet101", 44_549_160, 42_500_160),
    ("resnet152", 60_192_808, 58_143_808)])
def test_resnet_param_counts_match_torchvision(name, total, no_fc):
    with torch.device("meta"):
        assert count_params(create_backbone(name, num_classes=1000)) == total
        assert count_params(create_backbone(name)) == no_fc


def test_resnet_feature_spec_matches_outputs_on_odd_non_square_input():
    model = create_backbone("r50").eval()  # alias
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        feats = model(x)
    assert [f.shape[1] for f in feats] == list(model.feature_spec.channels) == [256, 512, 1024, 2048]
    # sizes round as in torchvision: 45x70 -> 12x18 -> 6x9 -> 3x5 -> 2x3
    assert [tuple(f.shape[-2:]) for f in feats] == [(12, 18), (6, 9), (3, 5), (2, 3)]
    assert model.feature_spec.strides == (4, 8, 16, 32)


def test_resnet18_has_no_dilated_form():
    with pytest.raises(UsageError, match="no dilated form"):
        create_backbone("resnet18", replace_stride_with_dilation=(False, True, True))
