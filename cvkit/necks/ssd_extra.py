"""SSD's extra feature layers: "SSD: Single Shot MultiBox Detector", Liu et al., ECCV 2016
(arXiv 1512.02325), and SSDLite's depthwise form from "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", Sandler et al., CVPR 2018 (arXiv 1801.04381); as mmdet 3.3's `SSDNeck`.

What is new: detection from several resolutions of one network, with extra layers appended after
the backbone (each a 1x1 conv to half width, then a 3x3 conv that halves the map or trims it by
2 px) so that coarse maps see large objects. SSD300 L2-normalises the conv4_3 map over channels
with a learned per-channel scale (init 20), since its activations are much larger than the
others'. SSDLite replaces the 3x3 with a depthwise-separable conv and adds BN (eps 1e-3) + ReLU6.

The inputs pass through (the first one L2-normalised when `l2_norm_scale`), and the extra layers
start from the last input. An input too small for an unpadded layer raises CvkitError. The strides in `feature_spec` double per stride-2 layer and stay for
stride-1 ones (nominal: the unpadded 3x3s of SSD300 shrink 5 -> 3 -> 1).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import CvkitError, UsageError
from ..nn.conv_module import ConvModule, DepthwiseSeparableConv
from ..nn.spec import FeatureSpec
from ..weights import register_converter, strip_prefix
from . import register_neck

PAPER = "SSD: Single Shot MultiBox Detector (Liu et al., ECCV 2016, arXiv 1512.02325)"


class L2Norm(nn.Module):
    """x / (||x||_2 over channels + eps) * weight[c], in float32."""

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        norm = xf.pow(2).sum(1, keepdim=True).sqrt() + self.eps
        return (self.weight[None, :, None, None].float() * xf / norm).type_as(x)


class SSDNeck(nn.Module):
    """Inputs of `in_spec`, then one extra level per entry of `out_channels`: 1x1 ConvModule to
    out/2, then a kxk conv (k = 3, or `last_kernel_size` for the last level) with the level's stride
    and padding; plain convs with bias + ReLU, or with `depthwise` the SSDLite form (BN `bn_eps`,
    ReLU6). Keys follow mmdet: `l2_norm.weight`, `extra_layers.l.{0,1}`."""

    def __init__(self, in_spec: FeatureSpec, out_channels=(512, 256, 256, 256), strides=(2, 2, 1, 1),
                 paddings=(1, 1, 0, 0), l2_norm_scale: float | None = 20.0, last_kernel_size: int = 3,
                 depthwise: bool = False, bn_eps: float = 1e-3):
        super().__init__()
        if not len(out_channels) == len(strides) == len(paddings):
            raise UsageError("SSDNeck needs one stride and one padding per extra level")
        if l2_norm_scale:
            self.l2_norm = L2Norm(in_spec.channels[0], l2_norm_scale)
        self.extra_layers = nn.ModuleList()
        self.kernel_padding = []
        channels, spec_strides = list(in_spec.channels), list(in_spec.strides)
        for i, (out, stride, pad) in enumerate(zip(out_channels, strides, paddings)):
            k = last_kernel_size if i == len(out_channels) - 1 else 3
            if depthwise:
                first = ConvModule(channels[-1], out // 2, 1, bn_eps=bn_eps, act=nn.ReLU6)
                second = DepthwiseSeparableConv(out // 2, out, k, stride, pad, bn_eps=bn_eps, act=nn.ReLU6)
            else:
                first = ConvModule(channels[-1], out // 2, 1)
                second = ConvModule(out // 2, out, k, stride, pad)
            self.extra_layers.append(nn.Sequential(first, second))
            self.kernel_padding.append((k, pad))
            channels.append(out)
            spec_strides.append(spec_strides[-1] * stride)
        self.feature_spec = FeatureSpec(tuple(channels), tuple(spec_strides))

    def forward(self, inputs: list[Tensor]) -> list[Tensor]:
        outs = list(inputs)
        if hasattr(self, "l2_norm"):
            outs[0] = self.l2_norm(outs[0])
        x = outs[-1]
        for i, (layer, (k, pad)) in enumerate(zip(self.extra_layers, self.kernel_padding)):
            if min(x.shape[-2:]) + 2 * pad < k:
                raise CvkitError(f"input too small for SSD: extra layer {i} gets a {tuple(x.shape[-2:])} map "
                                 f"and needs {k - 2 * pad} px (SSD300 needs inputs of about 268 px or more)")
            x = layer(x)
            outs.append(x)
        return outs


@register_converter("ssd_extra")
def convert_ssd_extra(sd):
    """mmdet's SSDNeck keys are cvkit's; a detector checkpoint's `neck.` prefix is dropped."""
    return strip_prefix(sd, "neck.")


@register_neck("ssd_extra", aliases=("ssd_neck",), family="ssd_extra", converter="ssd_extra", paper=PAPER)
def ssd_extra(in_spec: FeatureSpec, out_channels=(512, 256, 256, 256), strides=(2, 2, 1, 1),
              paddings=(1, 1, 0, 0), l2_norm_scale: float | None = 20.0, last_kernel_size: int = 3) -> SSDNeck:
    """SSD300's extras (SSD512: out (512, 256, 256, 256, 256), strides (2, 2, 2, 2, 1), paddings
    (1, 1, 1, 1, 1), last_kernel_size 4)."""
    return SSDNeck(in_spec, out_channels, strides, paddings, l2_norm_scale, last_kernel_size)


@register_neck("ssdlite_extra", family="ssd_extra", converter="ssd_extra", paper=PAPER)
def ssdlite_extra(in_spec: FeatureSpec, out_channels=(512, 256, 256, 128), strides=(2, 2, 2, 2),
                  paddings=(1, 1, 1, 1), bn_eps: float = 1e-3) -> SSDNeck:
    """SSDLite's depthwise-separable extras (BN + ReLU6, no L2Norm)."""
    return SSDNeck(in_spec, out_channels, strides, paddings, None, depthwise=True, bn_eps=bn_eps)
