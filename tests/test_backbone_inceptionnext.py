"""InceptionNeXt: parity with sail-sg/inceptionnext on the `inceptionnext_atto` fixture, deploy
equivalence, parameter counts, FeatureSpec, names and input checks."""
import pytest
import torch
from parity import assert_close, load_fixture

from cvkit.backbones import BACKBONES, create_backbone
from cvkit.backbones.inceptionnext import convert_inceptionnext
from cvkit.errors import CvkitError
from cvkit.nn import count_params, deploy
from cvkit.weights import load_state_dict_strict


@pytest.fixture(scope="module")
def atto():
    meta, ref, sd = load_fixture("backbones", "inceptionnext_atto")
    model = create_backbone("inceptionnext_atto", num_classes=1000)
    load_state_dict_strict(model, convert_inceptionnext(sd))
    return meta, ref, sd, model.eval()


def test_inceptionnext_atto_features_and_logits_match_official(atto):
    meta, ref, _, model = atto
    with torch.no_grad():
        feats = model(ref["input"])
        logits = model.classify(ref["input"])
    for i, f in enumerate(feats):
        assert_close(f, ref[f"features.{i}"], meta["tolerance"], f"features.{i}")
    assert_close(logits, ref["logits"], meta["tolerance"], "logits")


def test_inceptionnext_dense_form_loads_classifier_and_mmseg_checkpoints(atto):
    meta, ref, sd, _ = atto
    dense = create_backbone("inceptionnext_atto").eval()
    load_state_dict_strict(dense, convert_inceptionnext({f"backbone.{k}": v for k, v in sd.items()}))
    assert not any(k.startswith("head.") for k in dense.state_dict())
    with torch.no_grad():
        feats = dense(ref["input"])
    for i, f in enumerate(feats):
        assert_close(f, ref[f"features.{i}"], meta["tolerance"], f"features.{i}")


def test_inceptionnext_deploy_folds_bn_and_matches_official(atto):
    meta, ref, _, model = atto
    fused = deploy(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        feats = fused(ref["input"])
        logits = fused.classify(ref["input"])
    for i, f in enumerate(feats):
        assert_close(f, ref[f"features.{i}"], meta["tolerance"], f"deploy features.{i}")
    assert_close(logits, ref["logits"], meta["tolerance"], "deploy logits")


@pytest.mark.parametrize("name,total,body", [
    ("inceptionnext_atto", 4_156_520, 2_885_440),
    ("inceptionnext_t", 28_055_680, 23_974_296),
    ("inceptionnext_s", 49_374_016, 45_292_632),
    ("inceptionnext_b", 86_672_136, 80_444_192),
])
def test_inceptionnext_param_counts_match_official(name, total, body, on_meta):
    """Classifier = the official builder's count; dense form = the same without `head.*`."""
    assert count_params(create_backbone(name, num_classes=1000)) == total
    assert count_params(create_backbone(name)) == body


def test_inceptionnext_feature_spec_matches_outputs_on_non_square_input():
    model = create_backbone("inceptionnext_atto", out_indices=(1, 3)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert model.feature_spec.channels == (80, 320)
    assert model.feature_spec.strides == (8, 32)
    assert [tuple(f.shape) for f in feats] == [(1, c, 64 // s, 96 // s)
                                               for c, s in zip(model.feature_spec.channels,
                                                               model.feature_spec.strides)]


def test_inceptionnext_rejects_inputs_smaller_than_32():
    model = create_backbone("inceptionnext_atto").eval()
    with pytest.raises(CvkitError, match="at least 32"):
        model(torch.randn(1, 3, 32, 24))


@pytest.mark.parametrize("alias,name", [("inceptionnext_tiny", "inceptionnext_t"),
                                        ("inceptionnext_small", "inceptionnext_s"),
                                        ("inceptionnext_base", "inceptionnext_b")])
def test_inceptionnext_paper_names_are_aliases(alias, name):
    assert BACKBONES.canonical(alias) == name
    assert BACKBONES.meta(alias)["converter"] == "inceptionnext"
