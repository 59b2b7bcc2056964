"""FastDepth: "FastDepth: Fast Monocular Depth Estimation on Embedded Systems", Wofk, Ma, Yang,
Karaman & Sze, ICRA 2019 (arXiv 1903.03273); official dwofk/fast-depth@e684920, `models.py`
`MobileNetSkipAdd` (MobileNet-NNConv5(depthwise)-SkipAdd).

What is new: a decoder as light as the MobileNet encoder: five blocks of depthwise 5x5 + pointwise
1x1 convs, each followed by nearest x2 upsampling, with encoder maps added (not concatenated) at
the matching resolutions; the whole network is then channel-pruned with NetAdapt (0.37 GMACs).

Layout: the official checkpoint's encoder `conv0..13` (MobileNet v1 `model[0..13]`) becomes
`backbone.model.{i}` through the `fastdepth` converter; the decoder keeps the official
`decode_conv1..5` = [dw 5x5 + BN + ReLU, pw 1x1 + BN + ReLU] and `decode_conv6` (pw to 1 + BN +
ReLU). The output is depth in metres at the input size, non-negative (a ReLU), not scaled.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from cvkit.backbones.mobilenet_v1 import MobileNetV1, convert_mobilenet_v1
from cvkit.errors import CvkitError, UsageError
from cvkit.nn.conv_bn import ConvBNSequential, conv_bn_act
from cvkit.weights import load_state_dict_strict, register_converter, strip_prefix

DECODER_WIDTHS = (512, 256, 128, 64, 32)
MOBILENET_TAPS = (0, 1, 2, 4)  # conv1, conv3, conv5 (skips at strides 2, 4, 8) and conv13 (stride 32)


def depthwise(channels: int, kernel_size: int = 5) -> ConvBNSequential:
    """Depthwise k x k conv (stride 1, 'same' padding, no bias) + BN + ReLU."""
    return conv_bn_act(channels, channels, kernel_size, groups=channels)


def pointwise(in_ch: int, out_ch: int) -> ConvBNSequential:
    """1x1 conv (no bias) + BN + ReLU."""
    return conv_bn_act(in_ch, out_ch, 1)


class FastDepth(nn.Module):
    """The NNConv5dw decoder with additive skips on any backbone that has a `feature_spec`.

    The decoder starts from the backbone's last (coarsest) map at stride S = 2 ** len(widths).
    Block i = 1..n: `decode_conv{i}` (depthwise 5x5 + pointwise to widths[i-1]), nearest x2, then
    plus the backbone map at stride S / 2**i where there is one; a map whose channels differ goes
    through a 1x1 conv + BN first (`skip_proj.{stride}`; FastDepth's MobileNet needs none).
    `decode_conv{n+1}` (1x1 to one channel + BN + ReLU) gives Nx1xHxW depth in metres.
    An input whose sides are not multiples of S is padded at the bottom and right by edge
    replication and the output cropped back (the official model takes multiples of 32 only).
    """

    def __init__(self, backbone: nn.Module, widths=DECODER_WIDTHS, kernel_size: int = 5):
        super().__init__()
        spec = backbone.feature_spec
        self.stride = spec.strides[-1]
        if self.stride != 2 ** len(widths):
            raise UsageError(f"FastDepth needs one decoder width per x2 upsampling: the backbone's last "
                             f"stride is {self.stride}, but {len(widths)} widths give {2 ** len(widths)}")
        self.backbone = backbone
        self.num_blocks = len(widths)
        self.skip_strides = tuple(spec.strides[:-1])
        skip_channels = dict(zip(spec.strides[:-1], spec.channels[:-1]))
        self.skip_proj = nn.ModuleDict()
        c = spec.channels[-1]
        for i, w in enumerate(widths, 1):
            setattr(self, f"decode_conv{i}", nn.Sequential(depthwise(c, kernel_size), pointwise(c, w)))
            s = self.stride >> i
            if skip_channels.get(s, w) != w:
                self.skip_proj[str(s)] = ConvBNSequential(nn.Conv2d(skip_channels[s], w, 1, bias=False),
                                                          nn.BatchNorm2d(w))
            c = w
        setattr(self, f"decode_conv{self.num_blocks + 1}", pointwise(c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.stride, -w % self.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        *maps, x = self.backbone(x)
        skips = dict(zip(self.skip_strides, maps))
        for i in range(1, self.num_blocks + 1):
            x = F.interpolate(getattr(self, f"decode_conv{i}")(x), scale_factor=2, mode="nearest")
            s = self.stride >> i
            if s in skips:
                skip = skips[s]
                if str(s) in self.skip_proj:
                    skip = self.skip_proj[str(s)](skip)
                x = x + skip
        x = getattr(self, f"decode_conv{self.num_blocks + 1}")(x)
        return x[..., :h, :w]


def fastdepth_mobilenet(encoder_widths=None, decoder_widths=DECODER_WIDTHS) -> FastDepth:
    """MobileNet-NNConv5(depthwise)-SkipAdd; other widths build a channel-pruned copy (NetAdapt)."""
    return FastDepth(MobileNetV1(out_indices=MOBILENET_TAPS, widths=encoder_widths), decoder_widths)


@register_converter("fastdepth")
def convert_fastdepth(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official `MobileNetSkipAdd` keys (also under DataParallel's `module.`): `conv{i}.*` ->
    `backbone.model.{i}.*`, `decode_conv*` kept. BNs saved by torch < 0.4.1 lack
    `num_batches_tracked` (it only counts training steps); it is filled with 0. Keys already in
    cvkit's layout pass through."""
    sd = strip_prefix(sd, "module.")
    if "conv0.0.weight" not in sd:
        return dict(sd)
    out = {f"backbone.{k}": v for k, v in convert_mobilenet_v1(sd).items()}
    out.update((k, v) for k, v in sd.items() if k.startswith("decode_conv"))
    for k in [k for k in out if k.endswith(".running_mean")]:
        out.setdefault(k[:-len("running_mean")] + "num_batches_tracked", torch.tensor(0))
    return out


def fastdepth_from_state_dict(sd: Mapping[str, torch.Tensor]) -> FastDepth:
    """The MobileNet FastDepth whose encoder and decoder widths are read from `sd` (official or
    cvkit layout), with `sd` loaded strictly: the unpruned and the NetAdapt-pruned releases."""
    sd = convert_fastdepth(sd)
    try:
        encoder = [sd["backbone.model.0.0.weight"].shape[0]]
        encoder += [sd[f"backbone.model.{i}.3.weight"].shape[0] for i in range(1, 14)]
    except KeyError as e:
        raise CvkitError(f"not a FastDepth MobileNet state_dict: no {e.args[0]}") from None
    decoder = []
    for i in itertools.count(1):
        key = f"decode_conv{i}.1.0.weight"
        if key not in sd:
            break
        decoder.append(sd[key].shape[0])
    if f"decode_conv{len(decoder) + 1}.0.weight" not in sd:
        raise CvkitError(f"not a FastDepth MobileNet state_dict: no decode_conv{len(decoder) + 1} "
                         f"after {len(decoder)} decoder blocks")
    model = fastdepth_mobilenet(encoder, decoder)
    load_state_dict_strict(model, sd, "FastDepth")
    return model
