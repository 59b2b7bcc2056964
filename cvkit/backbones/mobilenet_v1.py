"""MobileNet v1: "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", Howard et al., 2017 (arXiv 1704.04861); cvkit follows FastDepth's ImageNet copy
(dwofk/fast-depth@e684920, `imagenet/mobilenet.py`, `MobileNet(relu6=True)`), FastDepth's encoder.

What is new: depthwise separable convolutions, a per-channel 3x3 followed by a 1x1 across
channels, about 8-9x cheaper than a dense 3x3 at nearly the same accuracy.

Layout: `model.0` conv 3x3/2 + BN + ReLU6, `model.1..13` [dw 3x3, BN, ReLU6, pw 1x1, BN, ReLU6],
`fc`. Taps are `model[1, 3, 5, 11, 13]` (64/128/256/512/1024 ch, strides 2-32; FastDepth's skips
are the first three). Features take any input size (official size rounding). The official classifier is
AvgPool2d(7) + view(-1, 1024), correct only for a 7x7 last map (224x224 input); `classify` raises
CvkitError for any other size. `cvkit.nn.deploy` folds every BN into its conv.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CvkitError, UsageError
from ..nn import FeatureSpec
from ..nn.conv_bn import ConvBNSequential, conv_bn_act
from ..weights import register_converter, strip_prefix
from . import register_backbone
from ._base import StageBackbone

PAPER = ("MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications "
         "(Howard et al., 2017, arXiv 1704.04861)")

# (in, out, stride) of model.1..13
BLOCKS = ((32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
          (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 1024, 2),
          (1024, 1024, 1))
TAPS = (1, 3, 5, 11, 13)
TAP_STRIDES = (2, 4, 8, 16, 32)


def conv_dw(inp: int, oup: int, stride: int) -> ConvBNSequential:
    """Depthwise separable block: dw 3x3 (stride) + BN + ReLU6, pw 1x1 + BN + ReLU6."""
    return ConvBNSequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp), nn.ReLU6(inplace=True),
        nn.Conv2d(inp, oup, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))


class MobileNetV1(StageBackbone):
    """FastDepth's MobileNet v1 (width 1.0, ReLU6).

    `num_classes=0` (dense form): `forward(x)` returns the taps `out_indices`; keys = `model.*`
    (blocks after the deepest requested tap are not built and their keys are ignored, as is `fc`).
    `num_classes>0`: also `fc`, with `forward_head` / `classify` giving logits.
    `widths`: output channels of model.0..13 (default 32, 64, ..., 1024); others build a
    channel-pruned copy, such as the encoder of FastDepth's NetAdapt-pruned release.
    """

    def __init__(self, out_indices=(0, 1, 2, 3, 4), num_classes: int = 0, widths=None):
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.num_classes = num_classes
        last = 13 if num_classes > 0 else TAPS[max(self.out_indices)]
        w = tuple(widths) if widths is not None else (32,) + tuple(b[1] for b in BLOCKS)
        if len(w) != 14:
            raise UsageError(f"MobileNet v1 widths: 14 output channels (model.0..13) expected, got {len(w)}")
        layers = [conv_bn_act(3, w[0], 3, 2, act=nn.ReLU6)] + [conv_dw(w[i], w[i + 1], b[2])
                                                               for i, b in enumerate(BLOCKS)]
        self.model = nn.Sequential(*layers[:last + 1])
        self.feature_spec = FeatureSpec(tuple(w[t] for t in TAPS), TAP_STRIDES).select(self.out_indices)
        if num_classes > 0:
            self.fc = nn.Linear(w[13], num_classes)
        else:
            self.ignored_keys = ("fc.",) + tuple(f"model.{k}." for k in range(last + 1, 14))

    def forward_features(self, x: torch.Tensor, last: int = 4) -> list[torch.Tensor]:
        """The taps 0..last."""
        outs = []
        for i, layer in enumerate(self.model[:TAPS[last] + 1]):
            x = layer(x)
            if i in TAPS:
                outs.append(x)
        return outs

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the 7x7 `model[13]` map: AvgPool2d(7), then `fc`."""
        if tuple(x.shape[-2:]) != (7, 7):
            raise CvkitError("MobileNet v1 (FastDepth) logits need a 7x7 last map, i.e. a 224x224 input; "
                             f"got a {tuple(x.shape[-2:])} map")
        return self.fc(F.avg_pool2d(x, 7).flatten(1))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[-1])


@register_converter("mobilenet_v1")
def convert_mobilenet_v1(sd):
    """FastDepth's ImageNet checkpoint (`module.model.{i}.*`, `module.fc.*`) drops `module.`; a
    FastDepth depth checkpoint's encoder `conv{i}.*` becomes `model.{i}.*` (decoder keys dropped)."""
    sd = strip_prefix(sd, "module.")
    if "conv0.0.weight" not in sd:
        return sd
    out = {}
    for k, v in sd.items():
        m = re.match(r"conv(\d+)\.(.+)", k)
        if m:
            out[f"model.{m[1]}.{m[2]}"] = v
    return out


@register_backbone("mobilenet_v1", aliases=("mobilenetv1", "mobilenet_v1_fastdepth"), family="mobilenet_v1",
                   converter="mobilenet_v1", paper=PAPER)
def mobilenet_v1(**kwargs) -> MobileNetV1:
    return MobileNetV1(**kwargs)
