"""FasterNet against the official-code fixture `fasternet_t0` (../shared/fixtures/backbones)."""
import pytest
import torch
from parity import assert_close, load_fixture

from cvkit.backbones import create_backbone
from cvkit.backbones.fasternet import convert_fasternet
from cvkit.errors import CvkitError
from cvkit.nn import count_params, deploy
from cvkit.weights import load_state_dict_strict


@pytest.fixture(scope="module")
def fixture():
    meta, ref, sd = load_fixture("backbones", "fasternet_t0")

    def submodel(name):
        exclude = tuple(meta["submodels"][name]["exclude_prefixes"])
        return {k: v for k, v in sd.items() if not k.startswith(exclude)}

    dense = create_backbone("fasternet_t0")
    load_state_dict_strict(dense, convert_fasternet(submodel("dense")))
    classifier = create_backbone("fasternet_t0", num_classes=1000)
    load_state_dict_strict(classifier, convert_fasternet(submodel("classifier")))
    return meta, ref, submodel, dense.eval(), classifier.eval()


@torch.no_grad()
def test_fasternet_t0_dense_features_match_official(fixture):
    meta, ref, _, dense, _ = fixture
    for i, out in enumerate(dense(ref["input"])):
        assert_close(out, ref[f"features.{i}"], meta["tolerance"], f"features.{i}")


@torch.no_grad()
def test_fasternet_t0_logits_match_official(fixture):
    meta, ref, _, _, classifier = fixture
    assert_close(classifier.classify(ref["input"]), ref["logits"], meta["tolerance"], "logits")


@torch.no_grad()
def test_fasternet_t0_deploy_outputs_match_official(fixture):
    meta, ref, _, dense, classifier = fixture
    for i, out in enumerate(deploy(dense)(ref["input"])):
        assert_close(out, ref[f"deploy.features.{i}"], meta["tolerance"], f"deploy.features.{i}")
    assert_close(deploy(classifier).classify(ref["input"]), ref["deploy.logits"], meta["tolerance"],
                 "deploy.logits")


def test_fasternet_official_deploy_keys_load_into_deployed_model(fixture):
    meta, _, _, dense, classifier = fixture
    official = {k for k, *_ in meta["deploy"]["layout"]}
    dense_keys, cls_keys = set(deploy(dense).state_dict()), set(deploy(classifier).state_dict())
    assert dense_keys | cls_keys == official
    assert count_params(deploy(classifier)) == meta["param_counts"]["deploy_classifier"]


# (classifier, fork_feat dense) parameters counted from the official code (ARCHITECTURES.md §3.6).
PARAMS = {"t0": (3.906e6, 2.216e6), "t1": (7.595e6, 5.661e6), "t2": (14.983e6, 12.722e6),
          "s": (31.181e6, 28.593e6), "m": (53.521e6, 50.770e6), "l": (93.465e6, 90.224e6)}


@pytest.mark.parametrize("variant", PARAMS)
def test_fasternet_param_counts_match_official(variant):
    cls_ref, dense_ref = PARAMS[variant]
    assert abs(count_params(create_backbone(f"fasternet_{variant}", num_classes=1000)) / cls_ref - 1) < 0.01
    assert abs(count_params(create_backbone(f"fasternet_{variant}")) / dense_ref - 1) < 0.01


@torch.no_grad()
def test_fasternet_feature_spec_matches_non_square_outputs():
    model = create_backbone("fasternet_t0").eval()
    outs = model(torch.randn(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == list(model.feature_spec.channels)
    assert [(64 // o.shape[2], 96 // o.shape[3]) for o in outs] == [(s, s) for s in model.feature_spec.strides]


@torch.no_grad()
def test_fasternet_out_indices_subset_gives_those_features(fixture):
    meta, ref, submodel, _, _ = fixture
    model = create_backbone("fasternet_t0", out_indices=(1, 3)).eval()
    load_state_dict_strict(model, convert_fasternet(submodel("dense")))
    outs = model(ref["input"])
    assert model.feature_spec.channels == (80, 320) and model.feature_spec.strides == (8, 32)
    assert_close(outs[0], ref["features.1"], meta["tolerance"], "features.1")
    assert_close(outs[1], ref["features.3"], meta["tolerance"], "features.3")


def test_fasternet_mmdet_and_classification_checkpoints_load_into_dense_form(fixture):
    _, _, submodel, _, _ = fixture
    model = create_backbone("fasternet_t0")
    load_state_dict_strict(model, convert_fasternet({f"backbone.{k}": v for k, v in submodel("dense").items()}
                                                    | {"neck.conv.weight": torch.zeros(1)}))
    with pytest.warns(UserWarning, match="norm0"):
        load_state_dict_strict(model, convert_fasternet(submodel("classifier")))


def test_fasternet_rejects_inputs_smaller_than_32():
    with pytest.raises(CvkitError, match="at least 32"):
        create_backbone("fasternet_t0")(torch.randn(1, 3, 24, 80))


@torch.no_grad()
def test_fasternet_floors_odd_input_sides_like_official():
    outs = create_backbone("fasternet_t0").eval()(torch.randn(1, 3, 100, 70))
    assert [tuple(o.shape[-2:]) for o in outs] == [(25, 17), (12, 8), (6, 4), (3, 2)]
