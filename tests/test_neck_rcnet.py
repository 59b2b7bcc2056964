"""RCNet's RCFPN neck (RevFP + CSN) against the official code (rcnet_neck fixture)."""
import pytest
import torch
from parity import assert_close, load_fixture

from cvkit.errors import UsageError
from cvkit.necks import NECKS, create_neck, neck_names
from cvkit.nn import FeatureSpec, count_params, deploy
from cvkit.weights import CONVERTERS, load_state_dict_strict

RESNET_SPEC = FeatureSpec((256, 512, 1024, 2048), (4, 8, 16, 32))


def _fixture_neck(sd):
    neck = create_neck("rcnet", RESNET_SPEC, start_level=1)
    load_state_dict_strict(neck, CONVERTERS.get(NECKS.meta("rcnet")["converter"])(sd))
    return neck.eval()


def test_rcnet_outputs_match_official_rcfpn_eager_and_deployed():
    meta, ref, sd = load_fixture("heads", "rcnet_neck")
    neck = _fixture_neck(sd)
    for form, net in (("", neck), ("deploy ", deploy(neck))):
        with torch.no_grad():
            outs = net([None, ref["input.1"], ref["input.2"], ref["input.3"]])
        assert len(outs) == len(meta["outputs"])
        for i, out in enumerate(outs):
            assert_close(out, ref[f"out.{i}"], meta["tolerance"], f"{form}out.{i}")


def test_rcnet_param_count_and_detector_checkpoint_keys():
    meta, _, sd = load_fixture("heads", "rcnet_neck")
    assert count_params(create_neck("rcnet", RESNET_SPEC, start_level=1)) == meta["params_counted"]
    detector = {f"neck.{k}": v for k, v in sd.items()}
    detector["backbone.conv1.weight"] = torch.zeros(64, 3, 7, 7)
    detector["bbox_head.retina_cls.bias"] = torch.zeros(720)
    _fixture_neck(detector)


def test_rcnet_feature_spec_matches_outputs_on_odd_input_size():
    """Three levels of a 75x101 image (strides 8-32): odd sizes at every level."""
    spec = FeatureSpec((32, 48, 64), (8, 16, 32))
    neck = create_neck("rcfpn", spec, out_channels=64).eval()
    assert neck.feature_spec == FeatureSpec((64,) * 5, (8, 16, 32, 64, 128))
    feats = [torch.randn(2, c, -(-75 // s), -(-101 // s)) for c, s in zip(spec.channels, spec.strides)]
    with torch.no_grad():
        outs = neck(feats)
    sizes = [(10, 13), (5, 7), (3, 4), (2, 2), (1, 1)]
    assert [tuple(o.shape) for o in outs] == [(2, 64, *hw) for hw in sizes]
    assert all(torch.isfinite(o).all() for o in outs)


def test_rcnet_rejects_wrong_number_of_levels():
    assert "rcnet" in neck_names()
    with pytest.raises(UsageError, match="three input levels"):
        create_neck("rcnet", RESNET_SPEC)
