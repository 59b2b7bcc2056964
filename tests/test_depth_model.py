"""FastDepth: official parity (fastdepth_mobilenet_nnconv5dw_skipadd), widths read from checkpoints
(NetAdapt-pruned), pickled whole-model releases, and the decoder on another backbone."""
from __future__ import annotations

import pytest
import torch
from cvkit.tasks.depth.fastdepth import FastDepth, fastdepth_from_state_dict, fastdepth_mobilenet
from parity import assert_close, load_fixture
from torch import nn

from cvkit.backbones import create_backbone
from cvkit.errors import CvkitError, UsageError
from cvkit.nn import count_gflops, count_params, deploy
from cvkit.safe_pickle import load_pickled_state_dict
from cvkit.weights import CONVERTERS, load_state_dict_strict

# a NetAdapt-like pruned copy: 14 encoder widths; decoder blocks 2-4 end at the widths of conv5, conv3, conv1
PRUNED_ENCODER = (24, 40, 56, 72, 88, 104, 120, 136, 152, 168, 184, 200, 216, 232)
PRUNED_DECODER = (112, 104, 72, 40, 16)


class MobileNetSkipAddLayout(nn.Module):
    """The official module tree (`conv{i}`, `decode_conv{i}` attributes) around a cvkit FastDepth,
    pickled whole like FastDepth's releases."""

    def __init__(self, model: FastDepth):
        super().__init__()
        for i, layer in enumerate(model.backbone.model):
            setattr(self, f"conv{i}", layer)
        for i in range(1, 7):
            setattr(self, f"decode_conv{i}", getattr(model, f"decode_conv{i}"))


def _randomise_bn(model: nn.Module) -> None:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)


@torch.no_grad()
def test_fastdepth_depth_and_preactivation_match_official_also_deployed():
    meta, ref, sd = load_fixture("heads", "fastdepth_mobilenet_nnconv5dw_skipadd")
    model = fastdepth_mobilenet()
    load_state_dict_strict(model, CONVERTERS.get("fastdepth")(sd))
    model.eval()
    preact = {}
    model.decode_conv6[1].register_forward_hook(lambda mod, inp, out: preact.update(out=out.clone()))
    assert_close(model(ref["input"]), ref["depth"], meta["tolerance"], "depth")
    assert_close(preact["out"], ref["depth_preact"], meta["tolerance"], "depth_preact")
    assert_close(deploy(model)(ref["input"]), ref["depth"], meta["tolerance"], "deploy depth")


def test_fastdepth_params_and_macs_match_official_counts():
    model = fastdepth_mobilenet()
    assert count_params(model) == 3_960_930
    # conv MACs: 0.737 G at 224x224; every map scales with the area at sides that are multiples of 32
    assert count_gflops(model, (64, 64)) * (224 / 64) ** 2 == pytest.approx(0.737, abs=5e-4)


@torch.no_grad()
def test_pruned_model_pickled_whole_loads_with_widths_from_the_checkpoint(tmp_path):
    source = fastdepth_mobilenet(PRUNED_ENCODER, PRUNED_DECODER)
    _randomise_bn(source)
    source.eval()
    path = tmp_path / "mobilenet-nnconv5dw-skipadd-pruned.pth.tar"
    torch.save({"epoch": 20, "model": MobileNetSkipAddLayout(source)}, path)
    sd = load_pickled_state_dict(path)
    assert "conv13.3.weight" in sd and "decode_conv6.1.running_var" in sd
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # as torch < 0.4.1 saved BN
    model = fastdepth_from_state_dict(sd).eval()
    assert model.backbone.feature_spec.channels == (40, 72, 104, 232)
    assert [getattr(model, f"decode_conv{i}")[1][0].out_channels for i in range(1, 6)] == list(PRUNED_DECODER)
    x = torch.rand(1, 3, 64, 96)
    torch.testing.assert_close(model(x), source(x))


def test_state_dict_that_is_not_fastdepth_is_refused():
    with pytest.raises(CvkitError, match="not a FastDepth MobileNet state_dict"):
        fastdepth_from_state_dict({"conv0.0.weight": torch.zeros(32, 3, 3, 3)})


@torch.no_grad()
def test_decoder_on_resnet18_projects_skips_and_returns_input_size():
    model = FastDepth(create_backbone("resnet18")).eval()
    assert sorted(model.skip_proj) == ["16", "4", "8"]  # 256->512, 64->128, 128->256
    x = torch.rand(1, 3, 96, 128)
    out = model(x)
    assert out.shape == (1, 1, 96, 128) and (out >= 0).all()
    torch.testing.assert_close(deploy(model)(x), out, rtol=1e-4, atol=1e-5)
    assert model(torch.rand(1, 3, 40, 50)).shape == (1, 1, 40, 50)  # padded to 64x64, cropped back


def test_decoder_widths_must_match_the_backbone_stride():
    with pytest.raises(UsageError, match="last stride is 32"):
        FastDepth(create_backbone("resnet18"), widths=(64, 32))
