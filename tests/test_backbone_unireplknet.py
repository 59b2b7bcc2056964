"""UniRepLKNet (arXiv 2311.15599) against the official code's outputs (fixture unireplknet_a)."""
import pytest
import torch
from parity import assert_close, load_fixture, synth

from cvkit.backbones import create_backbone, unireplknet
from cvkit.errors import CvkitError
from cvkit.nn import count_params, deploy
from cvkit.weights import CONVERTERS, load_state_dict_strict

# Classifier params (train graph, deploy graph) counted from the official code (NOTES_B).
OFFICIAL_PARAMS = {
    "a": (4.649e6, 4.437e6), "f": (6.489e6, 6.235e6), "p": (11.081e6, 10.742e6),
    "n": (18.819e6, 18.319e6), "t": (31.693e6, 31.038e6), "s": (56.457e6, 55.646e6),
    "b": (99.089e6, 98.008e6), "l": (220.076e6, 218.455e6), "xl": (388.691e6, 386.529e6),
}


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("backbones", "unireplknet_a")


def submodel_sd(meta, sd, name):
    """The official state_dict of one submodel of the union layout, converted to cvkit keys."""
    drop = tuple(meta["submodels"][name]["exclude_prefixes"])
    return CONVERTERS.get("unireplknet")({k: v for k, v in sd.items() if not k.startswith(drop)})


@pytest.fixture(scope="module")
def models(fixture):
    meta, _, sd = fixture
    dense = unireplknet.UniRepLKNet(**unireplknet.variant_args("a")).eval()
    dense.load_state_dict(submodel_sd(meta, sd, "dense"), strict=True)
    clf = unireplknet.UniRepLKNet(**unireplknet.variant_args("a"), num_classes=1000).eval()
    clf.load_state_dict(submodel_sd(meta, sd, "classifier"), strict=True)
    return dense, clf


@torch.no_grad()
def test_unireplknet_a_dense_features_match_official(fixture, models):
    meta, ref, _ = fixture
    feats = models[0](ref["input"])
    assert len(feats) == 4
    for i, f in enumerate(feats):
        assert_close(f, ref[f"features.{i}"], meta["tolerance"], f"features.{i}")


@torch.no_grad()
def test_unireplknet_a_classifier_logits_match_official(fixture, models):
    meta, ref, _ = fixture
    assert_close(models[1].classify(ref["input"]), ref["logits"], meta["tolerance"], "logits")


@torch.no_grad()
def test_unireplknet_a_deploy_matches_official_reparameterised_graph(fixture, models):
    meta, ref, _ = fixture
    dense, clf = deploy(models[0]), deploy(models[1])
    for i, f in enumerate(dense(ref["input"])):
        assert_close(f, ref[f"deploy.features.{i}"], meta["tolerance"], f"deploy.features.{i}")
    assert_close(clf.classify(ref["input"]), ref["deploy.logits"], meta["tolerance"], "deploy.logits")
    # every dilated branch had its own BN, so no BN left means every branch was merged
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in [*dense.modules(), *clf.modules()])


def test_unireplknet_a_official_deploy_keys_load_into_deployed_model(fixture, models):
    meta, _, _ = fixture
    deploy_sd = synth(meta["deploy"]["layout"], meta["seed"])
    for model, name in zip(models, ("dense", "classifier")):
        deployed = deploy(model)
        sd = submodel_sd(meta, deploy_sd, name)
        assert set(sd) == set(deployed.state_dict())
        deployed.load_state_dict(sd, strict=True)


def test_unireplknet_a_param_counts_match_official_exactly(fixture, models):
    counts = fixture[0]["param_counts"]
    dense, clf = models
    assert count_params(clf) == counts["train_classifier"]
    assert count_params(dense) == counts["train_dense_backbone"]
    assert count_params(deploy(clf)) == counts["deploy_classifier"]
    assert count_params(deploy(dense)) == counts["deploy_dense_backbone"]


@pytest.mark.parametrize("variant", list(OFFICIAL_PARAMS))
def test_unireplknet_param_counts_within_one_percent(variant):
    with torch.device("meta"):
        model = unireplknet.UniRepLKNet(**unireplknet.variant_args(variant), num_classes=1000)
    train, dep = OFFICIAL_PARAMS[variant]
    assert abs(count_params(model) - train) <= 0.01 * train
    assert abs(count_params(deploy(model)) - dep) <= 0.01 * dep


@torch.no_grad()
def test_unireplknet_feature_spec_matches_outputs_on_non_square_odd_input():
    model = create_backbone("unireplknet_a").eval()
    feats = model(torch.randn(1, 3, 70, 99))
    spec = model.feature_spec
    assert spec.strides == (4, 8, 16, 32)
    assert [f.shape[1] for f in feats] == list(spec.channels) == [40, 80, 160, 320]
    # padding 1 everywhere: ceil(size / stride)
    assert [tuple(f.shape[2:]) for f in feats] == [(-(-70 // s), -(-99 // s)) for s in spec.strides]


def test_unireplknet_create_backbone_by_alias():
    model = create_backbone("unireplknet_atto")
    assert model.feature_spec.channels == (40, 80, 160, 320)
    assert create_backbone("unireplknet_femto").feature_spec.channels == (48, 96, 192, 384)


@torch.no_grad()
def test_unireplknet_out_indices_subset_loads_full_checkpoint_and_matches(fixture):
    meta, ref, sd = fixture
    model = create_backbone("unireplknet_a", out_indices=(1, 2)).eval()
    assert len(model.stages) == 3  # stops after the last stage it outputs
    load_state_dict_strict(model, submodel_sd(meta, sd, "dense"))
    feats = model(ref["input"])
    assert model.feature_spec.channels == (80, 160) and model.feature_spec.strides == (8, 16)
    for f, i in zip(feats, (1, 2)):
        assert_close(f, ref[f"features.{i}"], meta["tolerance"], f"features.{i}")


def test_unireplknet_classification_and_openmmlab_checkpoints_load_into_dense_form(fixture):
    meta, _, sd = fixture
    model = create_backbone("unireplknet_a")
    with pytest.warns(UserWarning, match="norm0"):
        load_state_dict_strict(model, submodel_sd(meta, sd, "classifier"))
    dense = {k: v for k, v in sd.items() if not k.startswith(("norm.", "head."))}
    mmdet = {f"backbone.{k}": v for k, v in dense.items()} | {"neck.fpn.weight": torch.zeros(1)}
    load_state_dict_strict(model, CONVERTERS.get("unireplknet")(mmdet))


def test_unireplknet_rejects_wrong_channel_count():
    model = create_backbone("unireplknet_a")
    with pytest.raises(CvkitError, match="N x 3 x H x W"):
        model(torch.randn(1, 1, 32, 32))
