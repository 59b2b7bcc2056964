"""Super-resolution models: official parity (CFSR, SCNet), deploy merge, shapes, param counts."""
from __future__ import annotations

import pytest
import torch
from cvkit.tasks.upscale.cfsr import convert_cfsr
from cvkit.tasks.upscale.models import SR_MODELS, upscale_rgb
from parity import assert_close, load_fixture

from cvkit.errors import CvkitError, UsageError
from cvkit.nn import count_params, deploy
from cvkit.weights import CONVERTERS, load_state_dict_strict


def _load(stem: str, name: str, **kw):
    """(model loaded strictly with the fixture's converted weights, meta, ref)."""
    meta, ref, sd = load_fixture("heads", stem)
    for key in sd:
        if ".mask_" in key:  # constants synth cannot make
            sd[key] = ref["const." + key.rsplit(".", 1)[1]].expand_as(sd[key]).clone()
    model = SR_MODELS.build(name, **kw)
    load_state_dict_strict(model, CONVERTERS.get(SR_MODELS.meta(name)["converter"])(sd))
    return model.eval(), meta, ref


@torch.no_grad()
def test_cfsr_x4_released_layout_matches_official_and_deploys_to_it():
    model, meta, ref = _load("cfsr_x4", "cfsr", scale=4)
    assert_close(model(ref["input"]), ref["output"], meta["tolerance"], "output")
    merged = deploy(model)
    assert_close(merged(ref["input"]), ref["output"], meta["tolerance"], "deploy.output")
    official = {k.replace(".lkb_reparam.", "."): tuple(s) for k, s, _ in meta["layout"]}
    assert {k: tuple(v.shape) for k, v in merged.state_dict().items()} == official


@torch.no_grad()
def test_cfsr_x4_training_form_and_merge_match_official():
    model, meta, ref = _load("cfsr_x4_train", "cfsr", scale=4)
    assert_close(model(ref["input"]), ref["output"], meta["tolerance"], "output")
    assert_close(deploy(model)(ref["input"]), ref["deploy.output"], meta["tolerance"], "deploy.output")


def test_cfsr_converter_rejects_a_mask_that_is_not_the_official_constant():
    sd = load_fixture("heads", "cfsr_x4_train")[2]
    with pytest.raises(CvkitError, match="mask"):
        convert_cfsr(sd)  # synth's random values where the official Sobel mask belongs


@pytest.mark.parametrize("stem, kw", [("scnet_t_x4", {"scale": 4}),
                                      ("scnet_t_x4_ps", {"scale": 4, "upsampler": "pixelshuffle"}),
                                      ("scnet_t_x3", {"scale": 3})])
@torch.no_grad()
def test_scnet_t_matches_official(stem, kw):
    model, meta, ref = _load(stem, "scnet_t", **kw)
    assert_close(model(ref["input"]), ref["output"], meta["tolerance"], "output")


@pytest.mark.parametrize("name, kw, params", [
    ("cfsr", {"scale": 2}, 298_236), ("cfsr", {"scale": 3}, 304_731), ("cfsr", {"scale": 4}, 313_824),
    ("scnet_t", {"scale": 2}, 146_051), ("scnet_t", {"scale": 3}, 146_051),
    ("scnet_t", {"scale": 4}, 154_371), ("scnet_t", {"scale": 2, "upsampler": "pixelshuffle"}, 158_531),
    ("scnet_t", {"scale": 3, "upsampler": "pixelshuffle"}, 179_331),
    ("scnet_t", {"scale": 4, "upsampler": "pixelshuffle"}, 179_331),
    ("espcn", {"scale": 2}, 21_284), ("espcn", {"scale": 3}, 22_729), ("espcn", {"scale": 4}, 24_752),
    ("espcn", {"scale": 3, "mode": "rgb"}, 31_131)])
def test_param_counts_match_official(name, kw, params):
    assert count_params(SR_MODELS.build(name, **kw)) == params


@pytest.mark.parametrize("scale, params", [(2, 291_324), (3, 297_819), (4, 306_912)])
def test_cfsr_merged_param_counts_match_released_checkpoints(scale, params):
    assert count_params(deploy(SR_MODELS.build("cfsr", scale=scale))) == params


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("mode, channels", [("y", 1), ("rgb", 3)])
@torch.no_grad()
def test_espcn_output_is_scale_times_larger(scale, mode, channels):
    model = SR_MODELS.build("espcn", scale=scale, mode=mode).eval()
    assert (model.scale, model.in_channels) == (scale, mode)
    assert model(torch.rand(2, channels, 9, 14)).shape == (2, channels, 9 * scale, 14 * scale)
    assert upscale_rgb(model, torch.rand(1, 3, 9, 14)).shape == (1, 3, 9 * scale, 14 * scale)


@pytest.mark.parametrize("name, kw", [("espcn", {"scale": 5}), ("cfsr", {"scale": 8}),
                                      ("scnet_t", {"scale": 6}), ("bicubic", {"scale": 1}),
                                      ("espcn", {"scale": 2, "mode": "lab"}),
                                      ("scnet_t", {"scale": 4, "upsampler": "deconv"})])
def test_unsupported_configuration_is_a_usage_error(name, kw):
    with pytest.raises(UsageError):
        SR_MODELS.build(name, **kw)


def test_every_registered_model_states_scale_and_input():
    for name in ("espcn", "cfsr", "scnet_t", "bicubic"):
        model = SR_MODELS.build(name, scale=2)
        assert model.scale == 2 and model.in_channels in ("y", "rgb")


@torch.no_grad()
def test_bicubic_on_luma_with_bicubic_chroma_equals_bicubic_on_rgb():
    rgb = torch.rand(1, 3, 12, 10, dtype=torch.float64)
    rgb_model, y_model = SR_MODELS.build("bicubic", scale=3), SR_MODELS.build("bicubic", scale=3, mode="y")
    assert torch.allclose(upscale_rgb(y_model, rgb), rgb_model(rgb), atol=1e-12)
    assert rgb_model(rgb).shape == (1, 3, 36, 30)
