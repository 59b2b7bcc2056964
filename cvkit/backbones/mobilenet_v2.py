"""MobileNetV2: "MobileNetV2: Inverted Residuals and Linear Bottlenecks", Sandler et al., CVPR 2018
(arXiv 1801.04381); cvkit follows torchvision (pytorch/vision@1f1a920), the backbone of SSDLite.

What is new: the inverted residual block, which expands a thin bottleneck (1x1, x6), filters it
with a depthwise 3x3 and projects it back with a *linear* 1x1 (no activation, so the thin tensor
keeps its information), with the shortcut between the thin ends.

Taps are the last block at each resolution, `features[3, 6, 13, 17]` (24/32/96/320 ch, strides
4-32), plus index 4 = `features[18]`, the 1x1 conv to 1280 ch (stride 32). `mobilenet_v2_ssdlite`
is mmdet's SSDLite backbone: the same network with BN eps 1e-3, taps (2, 4) = mmdet's
out_indices (4, 7). Any input size is taken (official size rounding). `cvkit.nn.deploy` folds every BN.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from ..nn import FeatureSpec
from ..nn.conv_bn import ConvBNSequential, conv_bn_act
from ..weights import register_converter, strip_prefix
from . import register_backbone
from ._base import StageBackbone

PAPER = ("MobileNetV2: Inverted Residuals and Linear Bottlenecks "
         "(Sandler et al., CVPR 2018, arXiv 1801.04381)")

# (expansion t, channels c, repeats n, first stride s), the paper's Table 2.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))
TAPS = (3, 6, 13, 17, 18)
TAP_CHANNELS = (24, 32, 96, 320, 1280)
TAP_STRIDES = (4, 8, 16, 32, 32)


class InvertedResidual(nn.Module):
    """[1x1 expand + BN + ReLU6] -> dw 3x3 (stride) + BN + ReLU6 -> linear 1x1 + BN, with the
    shortcut when the stride is 1 and the width is unchanged (keys `conv.{0..3}`)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, eps: float):
        super().__init__()
        hidden = round(inp * expand_ratio)
        layers = [conv_bn_act(inp, hidden, 1, act=nn.ReLU6, eps=eps)] if expand_ratio != 1 else []
        layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6, eps=eps),
                   nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup, eps=eps)]
        self.conv = ConvBNSequential(*layers)
        self.use_res_connect = stride == 1 and inp == oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(StageBackbone):
    """torchvision MobileNetV2 (width 1.0): `features.0` stem, `features.1..17` inverted residuals,
    `features.18` the 1x1 conv to 1280.

    `num_classes=0` (dense form): `forward(x)` returns the taps `out_indices` (fine to coarse);
    keys = torchvision's minus `classifier.*` (layers after the deepest requested tap are not
    built and their keys are ignored). `num_classes>0`: also `classifier` (Dropout 0.2, Linear)
    after a global average pool, with `forward_head` / `classify` giving logits.
    """

    def __init__(self, bn_eps: float = 1e-5, out_indices=(0, 1, 2, 3), num_classes: int = 0):
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.num_classes = num_classes
        layers = [conv_bn_act(3, 32, 3, 2, act=nn.ReLU6, eps=bn_eps)]
        inp = 32
        for t, c, n, s in SETTINGS:
            for j in range(n):
                layers.append(InvertedResidual(inp, c, s if j == 0 else 1, t, bn_eps))
                inp = c
        layers.append(conv_bn_act(inp, 1280, 1, act=nn.ReLU6, eps=bn_eps))
        last = len(layers) - 1 if num_classes > 0 else TAPS[max(self.out_indices)]
        self.features = nn.Sequential(*layers[:last + 1])
        self.feature_spec = FeatureSpec(TAP_CHANNELS, TAP_STRIDES).select(self.out_indices)
        if num_classes > 0:
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))
        else:
            self.ignored_keys = ("classifier.",) + tuple(f"features.{k}." for k in range(last + 1, len(layers)))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor, last: int = 4) -> list[torch.Tensor]:
        """The taps 0..last."""
        outs = []
        for i, layer in enumerate(self.features[:TAPS[last] + 1]):
            x = layer(x)
            if i in TAPS:
                outs.append(x)
        return outs

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from `features[18]`'s output: global average pool, Dropout, Linear."""
        return self.classifier(x.mean((2, 3)))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[-1])


_MMDET_DEPTHS = tuple(n for _, _, n, _ in SETTINGS)


def _from_mmdet(key: str) -> str:
    """One OpenMMLab MobileNetV2 key (ConvModule `conv` / `bn` children) in torchvision's names."""
    m = re.match(r"conv([12])\.(conv|bn)\.(.+)", key)
    if m:
        return f"features.{0 if m[1] == '1' else 18}.{0 if m[2] == 'conv' else 1}.{m[3]}"
    m = re.match(r"layer(\d)\.(\d+)\.(expand_conv|depthwise_conv|linear_conv)\.(conv|bn)\.(.+)", key)
    if not m:
        raise KeyError(f"unexpected OpenMMLab MobileNetV2 key {key}")
    layer, j, part, sub, leaf = int(m[1]), int(m[2]), m[3], m[4], m[5]
    block = 1 + sum(_MMDET_DEPTHS[:layer - 1]) + j
    dw = 0 if layer == 1 else 1  # only layer1 (expansion 1) has no expand conv
    if part == "linear_conv":
        return f"features.{block}.conv.{dw + 1 + (sub == 'bn')}.{leaf}"
    idx = 0 if part == "expand_conv" else dw
    return f"features.{block}.conv.{idx}.{0 if sub == 'conv' else 1}.{leaf}"


@register_converter("mobilenet_v2")
def convert_mobilenet_v2(sd):
    """torchvision keys are cvkit's; OpenMMLab's MobileNetV2 (`backbone.conv1.conv`,
    `backbone.layer{1..7}.j.{expand,depthwise,linear}_conv.{conv,bn}`, `backbone.conv2`) is renamed."""
    sd = strip_prefix(strip_prefix(sd, "module."), "backbone.")
    if "conv1.conv.weight" not in sd:
        return sd
    return {_from_mmdet(k): v for k, v in sd.items()}


@register_backbone("mobilenet_v2", aliases=("mobilenetv2",), family="mobilenet_v2",
                   converter="mobilenet_v2", paper=PAPER)
def mobilenet_v2(**kwargs) -> MobileNetV2:
    return MobileNetV2(**kwargs)


@register_backbone("mobilenet_v2_ssdlite", aliases=("mobilenet_v2_mmdet",), family="mobilenet_v2",
                   converter="mobilenet_v2", paper=PAPER)
def mobilenet_v2_ssdlite(**kwargs) -> MobileNetV2:
    """mmdet SSDLite's MobileNetV2: BN eps 1e-3, taps 96 ch @16 and 1280 ch @32."""
    return MobileNetV2(**{"bn_eps": 1e-3, "out_indices": (2, 4), **kwargs})
