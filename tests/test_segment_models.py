"""FCN models: official parity (torchvision fcn_resnet50, mmseg FCN heads), checkpoint layouts and param
counts, the paper's skip nets on any backbone, bilinear upsampling init, output stride by dilation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cvkit.tasks.segment.fcn import (
    SEG_MODELS,
    BilinearUpsample,
    FixedBilinearUpsample,
    MMSegFCNHead,
    bilinear_kernel,
    dilated_backbone,
)
from parity import assert_close, load_fixture

from cvkit.errors import UsageError
from cvkit.nn import count_params, deploy
from cvkit.weights import CONVERTERS, load_state_dict_strict, strip_prefix, unwrap


def _convert(model_name: str, sd):
    return CONVERTERS.get(SEG_MODELS.meta(model_name)["converter"])(sd)


@torch.no_grad()
def test_fcn_resnet50_torchvision_matches_official_out_and_aux():
    meta, ref, sd = load_fixture("heads", "fcn_resnet50_tv")
    model = SEG_MODELS.build("fcn_resnet50")
    load_state_dict_strict(model, _convert("fcn_resnet50", sd))
    out = model.eval()(ref["input"])
    for name in ("out", "aux"):
        assert_close(out[name], ref[name], meta["tolerance"], name)
    c4 = model.backbone(ref["input"])[1]
    logits = F.interpolate(deploy(model.classifier)(c4), ref["out"].shape[-2:], mode="bilinear",
                           align_corners=False)
    assert_close(logits, ref["out"], meta["tolerance"], "deploy.classifier")

    no_aux = SEG_MODELS.build("fcn_resnet50", aux=False)  # the released file has aux keys: dropped
    load_state_dict_strict(no_aux, _convert("fcn_resnet50", {f"module.{k}": v for k, v in sd.items()}))
    assert list(no_aux.eval()(ref["input"])) == ["out"]


def test_fcn_resnet101_torchvision_layout_extends_resnet50_by_layer3_blocks_only():
    meta, _, _ = load_fixture("heads", "fcn_resnet50_tv")
    with torch.device("meta"):
        keys = SEG_MODELS.build("fcn_resnet101").state_dict().keys()
    r50 = {k for k, _, _ in meta["layout"]}
    assert r50 <= set(keys)
    assert all(k.startswith("backbone.layer3.") and int(k.split(".")[2]) >= 6 for k in set(keys) - r50)


@torch.no_grad()
def test_fcn_mmseg_heads_match_official():
    meta, ref, sd = load_fixture("heads", "fcn_r50_mmseg")
    decode = MMSegFCNHead(2048, 512, 19, num_convs=2, concat_input=True)
    aux = MMSegFCNHead(1024, 256, 19, num_convs=1, concat_input=False)
    load_state_dict_strict(decode, strip_prefix(sd, "decode_head."))
    load_state_dict_strict(aux, strip_prefix(sd, "auxiliary_head."))
    assert_close(decode.eval()(ref["c3"]), ref["decode_head"], meta["tolerance"], "decode_head")
    assert_close(aux.eval()(ref["c2"]), ref["auxiliary_head"], meta["tolerance"], "auxiliary_head")
    assert_close(deploy(decode)(ref["c3"]), ref["decode_head"], meta["tolerance"], "deploy.decode_head")


@torch.no_grad()
def test_fcn_r50_d8_loads_an_mmseg_checkpoint_strictly_and_runs_at_stride_8():
    meta, ref, sd = load_fixture("heads", "fcn_r50_mmseg")
    model = SEG_MODELS.build("fcn_r50-d8")
    own = model.state_dict()
    stem = sorted({".".join(k.split(".")[:3]) for k in own if k.startswith("backbone.stem.")})
    assert stem == [f"backbone.stem.{i}" for i in (0, 1, 3, 4, 6, 7)]
    assert "backbone.conv1.weight" not in own and "backbone.layer4.0.downsample.0.weight" in own
    checkpoint = {"meta": {"CLASSES": ["c"] * 19},  # mmseg's container: meta + state_dict
                  "state_dict": {**{k: v for k, v in own.items() if k.startswith("backbone.")}, **sd}}
    load_state_dict_strict(model, _convert("fcn_r50_d8", unwrap(checkpoint)))
    model.eval()
    assert_close(model.decode_head(ref["c3"]), ref["decode_head"], meta["tolerance"], "decode_head")
    x = torch.randn(1, 3, 44, 60)
    c3, c4 = model.backbone(x)
    assert c3.shape[-2:] == c4.shape[-2:] == (6, 8)
    out = model(x)
    assert out["out"].shape == out["aux"].shape == (1, 19, 44, 60)


def test_param_counts_match_torchvision_and_mmseg():
    with torch.device("meta"):
        counts = {(name, aux): count_params(SEG_MODELS.build(name, aux=aux))
                  for name in ("fcn_resnet50", "fcn_resnet101", "fcn_r50_d8") for aux in (True, False)}
        counts["fcn_r101_d8", True] = count_params(SEG_MODELS.build("fcn_r101_d8"))
        counts["ade", True] = count_params(SEG_MODELS.build("fcn_r50_d8", num_classes=150))
    assert counts["fcn_resnet50", True] == 35_322_218 and counts["fcn_resnet50", False] == 32_957_013
    assert counts["fcn_resnet101", True] == 54_314_346 and counts["fcn_resnet101", False] == 51_949_141
    assert counts["fcn_r50_d8", True] == 49_497_734 and counts["fcn_r50_d8", False] == 49_497_734 - 2_364_691
    assert counts["fcn_r101_d8", True] == 68_489_862 and counts["ade", True] == 49_598_604


@pytest.mark.parametrize("backbone", ["resnet18", "convnext_atto"])
@torch.no_grad()
def test_fcn8s_gives_logits_at_input_size_on_any_backbone(backbone):
    model = SEG_MODELS.build("fcn8s", backbone=backbone, num_classes=5).eval()
    assert model.head.in_index == (3, 2, 1)  # strides 32, 16, 8
    assert [up.factor for up in model.head.upscore] == [2, 2] and model.head.upscore_final.factor == 8
    for conv in model.head.score:
        torch.nn.init.normal_(conv.weight)
    for size in ((96, 128), (83, 101)):
        out = model(torch.randn(1, 3, *size))
        assert list(out) == ["out"] and out["out"].shape == (1, 5, *size)
        assert out["out"].abs().sum() > 0


@pytest.mark.parametrize("name, index", [("fcn32s", (3,)), ("fcn16s", (3, 2))])
def test_fcn32s_and_fcn16s_fuse_fewer_skips(name, index):
    assert SEG_MODELS.build(name, backbone="resnet18", num_classes=3).head.in_index == index


def test_upsampling_starts_as_bilinear_interpolation():
    assert torch.equal(bilinear_kernel(2)[0], torch.tensor([0.25, 0.75, 0.75, 0.25]) * 0.25)
    x = torch.randn(1, 4, 6, 8)
    for factor in (2, 3):
        up = BilinearUpsample(4, factor)
        assert up.weight.requires_grad and up.weight[0, 1].abs().sum() == 0
        with torch.no_grad():
            y = up(x)
        ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        assert y.shape == ref.shape
        inner = (..., slice(factor, -factor), slice(factor, -factor))  # borders see zero padding
        torch.testing.assert_close(y[inner], ref[inner], rtol=0, atol=1e-5)


@torch.no_grad()
def test_fixed_final_upsampling_equals_the_bilinear_deconvolution():
    x = torch.randn(1, 3, 5, 7)
    for factor in (2, 8, 32):
        deconv = torch.nn.ConvTranspose2d(3, 3, 2 * factor, factor, factor // 2, groups=3, bias=False)
        deconv.weight.copy_(bilinear_kernel(factor).expand_as(deconv.weight))
        torch.testing.assert_close(FixedBilinearUpsample(factor)(x), deconv(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("output_stride, strides", [(8, (4, 8, 8, 8)), (16, (4, 8, 16, 16))])
@torch.no_grad()
def test_output_stride_by_dilation_gives_the_stated_shapes(output_stride, strides):
    backbone = dilated_backbone("resnet50", output_stride).eval()
    assert backbone.feature_spec.strides == strides
    feats = backbone(torch.randn(1, 3, 32, 64))
    assert [f.shape[-2:] for f in feats] == [(32 // s, 64 // s) for s in strides]
    assert [f.shape[1] for f in feats] == list(backbone.feature_spec.channels)


@pytest.mark.parametrize("backbone, output_stride, match", [
    ("convnext_atto", 8, "no dilated form"),
    ("resnet18", 16, "cannot give output stride 16"),
    ("resnet50", 4, "must be 8, 16 or 32"),
])
def test_output_stride_where_impossible_raises_usage_error(backbone, output_stride, match):
    with pytest.raises(UsageError, match=match):
        SEG_MODELS.build("fcn8s", backbone=backbone, output_stride=output_stride)
