"""FastDepth's MobileNet v1 against the mobilenet_v1_fastdepth fixture; the FastDepth depth
checkpoint's encoder keys (fastdepth_mobilenet_nnconv5dw_skipadd layout) load through the converter."""
import pytest
import torch
from parity import assert_close, load_fixture, synth

from cvkit.backbones import backbone_names, create_backbone
from cvkit.errors import CvkitError
from cvkit.nn import count_params, deploy
from cvkit.weights import CONVERTERS, load_state_dict_strict

backbone_names()
convert = CONVERTERS.get("mobilenet_v1")


def test_mobilenet_v1_taps_logits_and_deploy_match_fastdepth():
    meta, ref, sd = load_fixture("backbones", "mobilenet_v1_fastdepth")
    model = create_backbone("mobilenet_v1", num_classes=1000)
    load_state_dict_strict(model, convert({f"module.{k}": v for k, v in sd.items()}))  # DataParallel keys
    model.eval()
    with torch.no_grad():
        for form, net in (("", model), ("deploy ", deploy(model))):
            for i, f in enumerate(net(ref["input"])):
                assert_close(f, ref[f"features.{i}"], meta["tolerance"], f"{form}features.{i}")
            assert_close(net.classify(ref["input_224"]), ref["logits"], meta["tolerance"], f"{form}logits")


def test_mobilenet_v1_logits_need_224_input():
    model = create_backbone("mobilenet_v1", num_classes=10).eval()
    with pytest.raises(CvkitError, match="224x224"):
        model.classify(torch.randn(1, 3, 160, 160))


def test_mobilenet_v1_dense_form_takes_fastdepth_encoder_keys():
    meta, ref, _ = load_fixture("backbones", "mobilenet_v1_fastdepth")
    _, _, depth_sd = load_fixture("heads", "fastdepth_mobilenet_nnconv5dw_skipadd")
    model = create_backbone("mobilenet_v1_fastdepth", out_indices=(0, 1, 2))  # alias; FastDepth's skips
    load_state_dict_strict(model, convert(depth_sd))
    assert len(model.model) == 6
    # seed 0 weights in FastDepth's `conv{i}` names give the ImageNet fixture's features
    renamed = {k.replace("model.", "conv", 1): v for k, v in synth(meta["layout"], 0).items()}
    load_state_dict_strict(model, convert(renamed))
    with torch.no_grad():
        for i, f in enumerate(model.eval()(ref["input"])):
            assert_close(f, ref[f"features.{i}"], meta["tolerance"], f"features.{i}")


def test_mobilenet_v1_param_counts_match_fastdepth():
    assert count_params(create_backbone("mobilenet_v1", num_classes=1000)) == 4_231_976
    assert count_params(create_backbone("mobilenet_v1")) == 3_206_976


def test_mobilenet_v1_feature_spec_matches_outputs_on_odd_non_square_input():
    model = create_backbone("mobilenet_v1", out_indices=(1, 3, 4)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 45, 70))
    assert [f.shape[1] for f in feats] == list(model.feature_spec.channels) == [128, 512, 1024]
    assert [tuple(f.shape[-2:]) for f in feats] == [(12, 18), (3, 5), (2, 3)]
    assert model.feature_spec.strides == (4, 16, 32)
