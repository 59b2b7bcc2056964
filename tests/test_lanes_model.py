"""SCNN: official parity (SCNN_Pytorch port layout), message passing, the head on another backbone."""
from __future__ import annotations

import pytest
import torch
from cvkit.tasks.lanes.scnn import MessagePassing, SCNNHead, build_scnn, convert_scnn, sweep, sweep_fast
from parity import assert_close, load_fixture

from cvkit.errors import CvkitError, UsageError
from cvkit.nn import FeatureSpec, count_params, deploy
from cvkit.weights import CONVERTERS, load_state_dict_strict


@pytest.fixture(scope="module")
def scnn_vgg16():
    meta, ref, sd = load_fixture("heads", "scnn_vgg16")
    model = build_scnn("vgg16_bn_scnn", input_size=(256, 144))
    load_state_dict_strict(model, CONVERTERS.get("scnn")(sd))
    return model.eval(), meta, ref


@torch.no_grad()
def test_scnn_vgg16_matches_official_port(scnn_vgg16):
    model, meta, ref = scnn_vgg16
    out = model(ref["input"])
    for name in meta["outputs"]:
        assert_close(out[name], ref[name], meta["tolerance"], name)


@torch.no_grad()
def test_scnn_vgg16_deploy_form_folds_bn_and_matches_official(scnn_vgg16):
    model, meta, ref = scnn_vgg16
    merged = deploy(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in merged.modules())
    out = merged(ref["input"])
    for name in meta["outputs"]:
        assert_close(out[name], ref[name], meta["tolerance"], f"deploy.{name}")


def test_scnn_converter_maps_port_keys_and_drops_the_loss_weight():
    sd = {"backbone.0.weight": 0, "backbone.41.running_var": 1, "layer1.0.weight": 2,
          "message_passing.up_down.weight": 3, "layer2.1.bias": 4, "fc.2.weight": 5, "ce_loss.weight": 6}
    assert convert_scnn({f"module.{k}": v for k, v in sd.items()}) == {
        "backbone.features.0.weight": 0, "backbone.features.41.running_var": 1, "head.layer1.0.weight": 2,
        "head.message_passing.up_down.weight": 3, "head.layer2.1.bias": 4, "head.fc.2.weight": 5}


@torch.no_grad()
def test_message_passing_plain_and_fast_recursions_match_official():
    meta, ref, sd = load_fixture("heads", "scnn_message_passing")
    mp = MessagePassing(128, 9).eval()
    load_state_dict_strict(mp, {k.removeprefix("message_passing."): v for k, v in sd.items()})
    assert_close(mp.forward_plain(ref["input"]), ref["out"], meta["tolerance"], "out (plain recursion)")
    assert_close(mp(ref["input"]), ref["out"], meta["tolerance"], "out (fast recursion)")


@torch.no_grad()
def test_fast_sweep_equals_plain_sweep_in_every_direction_and_batch():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 7)
    for dim, kernel in ((2, (1, 5)), (3, (5, 1))):
        conv = torch.nn.Conv2d(8, 8, kernel, padding=(kernel[0] // 2, kernel[1] // 2), bias=False)
        for reverse in (False, True):
            plain, fast = sweep(x, conv, dim, reverse), sweep_fast(x, conv, dim, reverse)
            assert_close(fast, plain, {"rtol": 1e-5, "atol": 1e-6}, f"dim {dim} reverse {reverse}")


def test_fast_message_passing_trains_like_the_plain_recursion():
    torch.manual_seed(0)
    mp = MessagePassing(8, 5)
    x = torch.randn(2, 8, 4, 6, requires_grad=True)
    grads = []
    for forward in (mp.forward_plain, mp.forward):
        mp.zero_grad()
        x.grad = None
        forward(x).square().sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in mp.parameters()])
    for i, (plain, fast) in enumerate(zip(*grads)):
        assert_close(fast, plain, {"rtol": 1e-5, "atol": 1e-6}, f"gradient {i}")


def test_message_passing_uses_the_updated_previous_slice():
    mp = MessagePassing(1, 1)
    for conv in (mp.up_down, mp.down_up, mp.left_right, mp.right_left):
        torch.nn.init.zeros_(conv.weight)
    torch.nn.init.ones_(mp.up_down.weight)  # only the top-to-bottom sweep passes messages
    x = torch.ones(1, 1, 4, 1)
    # S'_0 = 1, S'_i = 1 + S'_{i-1}: a running sum, not 1 + S_{i-1} = 2
    assert mp.forward_plain(x).flatten().tolist() == [1, 2, 3, 4]
    assert mp(x).flatten().tolist() == [1, 2, 3, 4]


def test_scnn_param_counts_follow_the_input_size():
    with torch.device("meta"):
        counts = [count_params(build_scnn(input_size=s)) for s in ((256, 144), (800, 288), (512, 288))]
    assert counts == [20_258_377, 20_742_217, 20_534_857]  # NOTES_DENSE §2; only fc.0 changes


@pytest.fixture(scope="module")
def scnn_resnet18():
    return build_scnn("resnet18", input_size=(256, 128), num_lanes=4).eval()


@torch.no_grad()
def test_scnn_head_runs_on_resnet18_stride8_output(scnn_resnet18):
    model = scnn_resnet18
    assert model.backbone.feature_spec == FeatureSpec((128,), (8,))
    assert model.head.fc[0].in_features == 5 * 16 * 8
    out = model(torch.randn(2, 3, 128, 256))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "seg_pred": (2, 5, 128, 256), "exist_pred": (2, 4), "seg_logits_s8": (2, 5, 16, 32)}
    assert ((out["exist_pred"] > 0) & (out["exist_pred"] < 1)).all()


@torch.no_grad()
def test_scnn_rejects_an_input_of_another_size_than_it_was_built_for(scnn_resnet18):
    with pytest.raises(CvkitError, match="built for 256x128"):
        scnn_resnet18(torch.randn(1, 3, 160, 256))


def test_scnn_head_needs_a_stride_8_feature():
    with pytest.raises(UsageError, match="stride 8"):
        SCNNHead(FeatureSpec((64, 128), (4, 16)), input_size=(256, 128))
