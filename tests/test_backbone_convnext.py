"""ConvNeXt: parity with facebookresearch/ConvNeXt (classifier and mmdet wrapper, `convnext_tiny`)
and timm (`convnext_atto_timm`, conv-MLP form), layout conversion, parameter counts, FeatureSpec,
names and input checks."""
import re

import pytest
import torch
from parity import assert_close, load_fixture, synth

from cvkit.backbones import BACKBONES, create_backbone
from cvkit.backbones.convnext import convert_convnext
from cvkit.errors import CvkitError
from cvkit.nn import count_params
from cvkit.weights import load_state_dict_strict


@pytest.fixture(scope="module")
def tiny():
    meta, ref, sd = load_fixture("backbones", "convnext_tiny")
    model = create_backbone("convnext_t", num_classes=1000)
    load_state_dict_strict(model, convert_convnext(sd))
    return meta, ref, sd, model.eval()


def test_convnext_tiny_classifier_stages_and_logits_match_official(tiny):
    meta, ref, _, model = tiny
    with torch.no_grad():
        stages = model(ref["input"])
        logits = model.classify(ref["input"])
    for i, s in enumerate(stages):
        assert_close(s, ref[f"stages.{i}"], meta["tolerance"], f"stages.{i}")
    assert_close(logits, ref["logits"], meta["tolerance"], "logits")


def test_convnext_tiny_dense_features_match_official_mmdet_wrapper(tiny):
    meta, ref, _, _ = tiny
    det_sd = {f"backbone.{k}": v for k, v in synth(meta["layout_det"], meta["seed"]).items()}
    dense = create_backbone("convnext_tiny").eval()
    load_state_dict_strict(dense, convert_convnext(det_sd))
    with torch.no_grad():
        feats = dense(ref["input"])
    for i, f in enumerate(feats):
        assert_close(f, ref[f"features.{i}"], meta["tolerance"], f"features.{i}")


def test_convnext_dense_form_loads_imagenet_checkpoint_with_unit_output_norms(tiny):
    _, _, sd, _ = tiny
    dense = create_backbone("convnext_t", out_indices=(2,))
    with pytest.warns(UserWarning, match="norm2"):
        load_state_dict_strict(dense, convert_convnext(sd))
    assert torch.equal(dense.norm2.weight, torch.ones(384))
    assert not hasattr(dense, "norm0")


def test_convnext_timm_linear_layout_converts_to_official(tiny):
    """timm's non-conv-MLP layout (tiny..xlarge) of the same weights gives the same logits."""
    meta, ref, sd, model = tiny
    renames = [(r"^downsample_layers\.0\.", "stem."), (r"^downsample_layers\.(\d)\.", r"stages.\1.downsample."),
               (r"^stages\.(\d)\.(\d+)\.", r"stages.\1.blocks.\2."), (r"\.dwconv\.", ".conv_dw."),
               (r"\.pwconv(\d)\.", r".mlp.fc\1."), (r"^norm\.", "head.norm."), (r"^head\.(weight|bias)", r"head.fc.\1")]
    timm_sd = {}
    for k, v in sd.items():
        for pattern, repl in renames:
            k = re.sub(pattern, repl, k)
        timm_sd[k] = v
    load_state_dict_strict(model, convert_convnext(timm_sd))
    with torch.no_grad():
        assert_close(model.classify(ref["input"]), ref["logits"], meta["tolerance"], "logits")


def test_convnext_atto_timm_conv_mlp_features_and_logits_match_timm():
    meta, ref, sd = load_fixture("backbones", "convnext_atto_timm")
    model = create_backbone("convnext_atto", num_classes=1000).eval()
    load_state_dict_strict(model, convert_convnext(sd))
    with torch.no_grad():
        feats = model(ref["input"])
        logits = model.classify(ref["input"])
    for i, f in enumerate(feats):
        assert_close(f, ref[f"features.{i}"], meta["tolerance"], f"features.{i}")
    assert_close(logits, ref["logits"], meta["tolerance"], "logits")


@pytest.mark.parametrize("name,total,dense", [
    ("convnext_atto", 3_695_520, 3_373_880 + 2 * 600),
    ("convnext_femto", 5_217_784, 4_832_016 + 2 * 720),
    ("convnext_pico", 9_045_672, 8_531_648 + 2 * 960),
    ("convnext_nano", 15_593_560, 14_951_280 + 2 * 1200),
    ("convnext_t", 28_589_128, 27_821_472),
    ("convnext_s", 50_223_688, 49_456_032),
    ("convnext_b", 88_591_464, 87_568_256),
])
def test_convnext_param_counts_match_official(name, total, dense, on_meta):
    """Classifier = the official (t/s/b) or timm (atto..nano) count with 1000 classes; dense =
    the mmdet wrapper's count (atto..nano: timm's body without head, plus norm0..3)."""
    assert count_params(create_backbone(name, num_classes=1000)) == total
    assert count_params(create_backbone(name)) == dense


def test_convnext_feature_spec_matches_outputs_on_non_square_input():
    model = create_backbone("convnext_atto", out_indices=(0, 2)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 96, 64))
    assert model.feature_spec.channels == (40, 160)
    assert model.feature_spec.strides == (4, 16)
    assert [tuple(f.shape) for f in feats] == [(1, c, 96 // s, 64 // s)
                                               for c, s in zip(model.feature_spec.channels,
                                                               model.feature_spec.strides)]


def test_convnext_rejects_inputs_smaller_than_32():
    model = create_backbone("convnext_atto").eval()
    with pytest.raises(CvkitError, match="at least 32"):
        model(torch.randn(1, 3, 16, 64))


@pytest.mark.parametrize("alias,name", [("convnext_tiny", "convnext_t"), ("convnext_small", "convnext_s"),
                                        ("convnext_base", "convnext_b")])
def test_convnext_paper_names_are_aliases(alias, name):
    assert BACKBONES.canonical(alias) == name
    assert BACKBONES.meta(alias)["converter"] == "convnext"


def test_convnext_create_backbone_loads_timm_checkpoint_file(tmp_path):
    meta, ref, sd = load_fixture("backbones", "convnext_atto_timm")
    torch.save(sd, tmp_path / "convnext_atto.pth")
    model = create_backbone("convnext_atto", weights=tmp_path / "convnext_atto.pth", num_classes=1000)
    with torch.no_grad():
        assert_close(model.eval().classify(ref["input"]), ref["logits"], meta["tolerance"], "logits")
