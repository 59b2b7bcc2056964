"""HorNet against the official-code fixtures `hornet_t_7x7` and `hornet_t_gf`
(../shared/fixtures/backbones)."""
from functools import cache

import pytest
import torch
from parity import assert_close, load_fixture

from cvkit.backbones import create_backbone
from cvkit.backbones.hornet import convert_hornet
from cvkit.errors import CvkitError
from cvkit.nn import count_params
from cvkit.weights import load_state_dict_strict

STEMS = ("hornet_t_7x7", "hornet_t_gf")  # fixture stems are also the cvkit names


@cache
def _load(stem):
    return load_fixture("backbones", stem)


def _submodel(meta, sd, name):
    exclude = tuple(meta["submodels"][name]["exclude_prefixes"])
    return {k: v for k, v in sd.items() if not k.startswith(exclude)}


@pytest.fixture(scope="module", params=STEMS)
def fixture(request):
    meta, ref, sd = _load(request.param)
    return request.param, meta, ref, sd


@torch.no_grad()
def test_hornet_dense_features_match_official(fixture):
    name, meta, ref, sd = fixture
    model = create_backbone(name)
    load_state_dict_strict(model, convert_hornet(_submodel(meta, sd, "dense")))
    for i, out in enumerate(model.eval()(ref["input"])):
        assert_close(out, ref[f"features.{i}"], meta["tolerance"], f"{name} features.{i}")


@torch.no_grad()
def test_hornet_logits_match_official(fixture):
    name, meta, ref, sd = fixture
    model = create_backbone(name, num_classes=1000)
    load_state_dict_strict(model, convert_hornet(_submodel(meta, sd, "classifier")))
    assert_close(model.eval().classify(ref["input"]), ref["logits"], meta["tolerance"], f"{name} logits")


def test_hornet_param_counts_match_official(fixture):
    name, meta, _, _ = fixture
    counts = meta["param_counts"]
    assert abs(count_params(create_backbone(name, num_classes=1000)) / counts["classifier"] - 1) < 0.01
    assert abs(count_params(create_backbone(name)) / counts["dense"] - 1) < 0.01


@torch.no_grad()
def test_hornet_gf_feature_spec_matches_non_square_outputs():
    model = create_backbone("hornet_tiny_gf", out_indices=(1, 2, 3)).eval()
    outs = model(torch.randn(1, 3, 64, 96))
    assert model.feature_spec.channels == (128, 256, 512)
    assert [o.shape[1] for o in outs] == list(model.feature_spec.channels)
    assert [(64 // o.shape[2], 96 // o.shape[3]) for o in outs] == [(s, s) for s in model.feature_spec.strides]


@torch.no_grad()
def test_hornet_out_indices_subset_loads_mmdet_checkpoint_and_gives_those_features():
    meta, ref, sd = _load("hornet_t_7x7")
    model = create_backbone("hornet_tiny_7x7", out_indices=(0, 2))
    mmdet = {f"backbone.{k}": v for k, v in _submodel(meta, sd, "dense").items()}
    load_state_dict_strict(model, convert_hornet(mmdet))
    outs = model.eval()(ref["input"])
    assert model.feature_spec.strides == (4, 16)
    assert_close(outs[0], ref["features.0"], meta["tolerance"], "features.0")
    assert_close(outs[1], ref["features.2"], meta["tolerance"], "features.2")


def test_hornet_classification_checkpoint_loads_into_dense_form_with_warning():
    meta, _, sd = _load("hornet_t_7x7")
    with pytest.warns(UserWarning, match="norm0"):
        load_state_dict_strict(create_backbone("hornet_t_7x7"), convert_hornet(_submodel(meta, sd, "classifier")))


def test_hornet_rejects_inputs_smaller_than_32():
    with pytest.raises(CvkitError, match="at least 32"):
        create_backbone("hornet_t_7x7")(torch.randn(1, 3, 48, 16))


@torch.no_grad()
def test_hornet_gf_floors_odd_input_sides_like_official():
    outs = create_backbone("hornet_t_gf").eval()(torch.randn(1, 3, 100, 70))
    assert [tuple(o.shape[-2:]) for o in outs] == [(25, 17), (12, 8), (6, 4), (3, 2)]
