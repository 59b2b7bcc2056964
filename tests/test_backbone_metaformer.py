"""ConvFormer / CAFormer (cvkit.backbones.metaformer) against the sail-sg/metaformer fixtures."""
import re

import pytest
import torch
from parity import assert_close, load_fixture

from cvkit.backbones import create_backbone
from cvkit.errors import CvkitError
from cvkit.nn import count_params
from cvkit.weights import CONVERTERS, load_state_dict_strict

STEMS = ["convformer_s18", "caformer_s18"]

# Counted from the official builders (ARCHITECTURES.md §3.3, NOTES_A.md §3): total with the
# 1000-class head, and without `norm` and `head`.
PARAMS = {
    "convformer_s18": (26_774_448, 23_669_704),
    "convformer_s36": (40_012_152, 36_907_408),
    "convformer_m36": (57_051_640, 53_411_472),
    "convformer_b36": (99_882_616, 94_439_568),
    "caformer_s18": (26_341_656, 23_236_912),
    "caformer_s36": (39_297_102, 36_192_358),
    "caformer_m36": (56_204_878, 52_564_710),
    "caformer_b36": (98_753_614, 93_310_566),
}


def _loaded(stem, sd, **kw):
    model = create_backbone(stem, **kw)
    load_state_dict_strict(model, CONVERTERS.get("metaformer")(sd))
    return model.eval()


@pytest.mark.parametrize("stem", STEMS)
def test_classifier_features_and_logits_match_official(stem):
    meta, ref, sd = load_fixture("backbones", stem)
    model = _loaded(stem, sd, num_classes=1000)
    with torch.no_grad():
        feats = model(ref["input"])
        logits = model.classify(ref["input"])
    for i, f in enumerate(feats):
        assert_close(f, ref[f"features.{i}"], meta["tolerance"], f"features.{i}")
    assert_close(logits, ref["logits"], meta["tolerance"], "logits")


@pytest.mark.parametrize("stem", STEMS)
def test_dense_form_loads_classifier_checkpoint_and_matches_features(stem):
    meta, ref, sd = load_fixture("backbones", stem)
    model = _loaded(stem, sd)
    assert not any(k.startswith(("norm.", "head.")) for k in model.state_dict())
    with torch.no_grad():
        feats = model(ref["input"])
    for i, f in enumerate(feats):
        assert_close(f, ref[f"features.{i}"], meta["tolerance"], f"features.{i}")


def _to_timm(sd):
    """The official layout renamed as timm's `metaformer` (1x1 convs where timm's stage is NCHW)."""
    out = {}
    for k, v in sd.items():
        attention = ".token_mixer.qkv." in k or ".token_mixer.proj." in k
        k = k.replace("downsample_layers.0.post_norm.", "stem.norm.").replace("downsample_layers.0.", "stem.")
        k = re.sub(r"^downsample_layers\.(\d+)\.(pre_norm|conv)\.",
                   lambda m: f"stages.{m[1]}.downsample.{'norm' if m[2] == 'pre_norm' else 'conv'}.", k)
        k = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", k)
        k = re.sub(r"^head\.", "head.fc.", k)
        k = re.sub(r"^norm\.", "head.norm.", k)
        nchw_linear = re.search(r"\.(pwconv1|pwconv2|fc1|fc2)\.weight$", k) and k.startswith("stages.")
        out[k] = v[:, :, None, None] if nchw_linear and not attention else v
    return out


def test_caformer_timm_and_openmmlab_layouts_convert_to_the_same_model():
    meta, ref, sd = load_fixture("backbones", "caformer_s18")
    timm_sd = _to_timm(sd)
    assert "stages.0.blocks.0.mlp.fc1.weight" in timm_sd and "head.fc.fc2.bias" in timm_sd
    model = _loaded("caformer_s18", timm_sd, num_classes=1000)
    with torch.no_grad():
        assert_close(model.classify(ref["input"]), ref["logits"], meta["tolerance"], "logits (timm layout)")
    dense = _loaded("caformer_s18", {f"backbone.{k}": v for k, v in sd.items()}, out_indices=(3,))
    with torch.no_grad():
        assert_close(dense(ref["input"])[0], ref["features.3"], meta["tolerance"], "features.3 (backbone.)")


@pytest.mark.parametrize("name", list(PARAMS))
def test_param_counts_equal_official(name):
    model = create_backbone(name, num_classes=1000)
    total = count_params(model)
    body = total - sum(p.numel() for k, p in model.named_parameters() if k.startswith(("norm.", "head.")))
    want_total, want_body = PARAMS[name]
    assert (total, body) == (want_total, want_body)


def test_feature_spec_matches_outputs_on_non_square_input():
    model = create_backbone("caformer_s18").eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == list(model.feature_spec.channels)
    assert [(f.shape[2], f.shape[3]) for f in feats] == [(64 // s, 96 // s) for s in model.feature_spec.strides]


def test_alias_and_out_indices_subset():
    model = create_backbone("convformer_s18_384_in21ft1k", out_indices=(1, 3)).eval()
    assert model.feature_spec.channels == (128, 512) and model.feature_spec.strides == (8, 32)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(1, 128, 4, 4), (1, 512, 1, 1)]


def test_odd_input_is_accepted_and_too_small_input_raises():
    model = create_backbone("convformer_s18", out_indices=(0,)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 50))[0].shape[-2:] == (9, 12)
        with pytest.raises(CvkitError, match="H, W >= 3"):
            model(torch.randn(1, 3, 2, 64))
        with pytest.raises(CvkitError):
            model(torch.randn(1, 1, 64, 64))
