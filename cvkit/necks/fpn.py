"""FPN: "Feature Pyramid Networks for Object Detection", Lin et al., CVPR 2017 (arXiv 1612.03144),
as mmdet 3.3's `FPN` configured for RetinaNet (configs/_base_/models/retinanet_r50_fpn.py).

What is new: a top-down pathway with lateral connections gives every level of the pyramid the
semantics of the coarsest one at its own resolution. Each input gets a 1x1 lateral conv; from the
coarsest down, each lateral adds the nearest-neighbour upsampling (to its exact size) of the one
above; a 3x3 conv smooths every sum. No norm, no activation. RetinaNet adds P6 = 3x3/2 conv on C5
(`extra_source="input"`, mmdet's add_extra_convs='on_input') and P7 = 3x3/2 conv on P6, with no
ReLU in between unless `relu_before_extra_convs`.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from ..nn.conv_module import ConvModule
from ..nn.spec import FeatureSpec
from ..weights import register_converter, strip_prefix
from . import register_neck

PAPER = "Feature Pyramid Networks for Object Detection (Lin et al., CVPR 2017, arXiv 1612.03144)"


class FPN(nn.Module):
    """Inputs `in_spec` levels start_level.. (fine to coarse); outputs `num_outs` maps of
    `out_channels`, the extra ones by stride-2 3x3 convs. Keys follow mmdet (`lateral_convs.i.conv`,
    `fpn_convs.i.conv`, the extra convs last)."""

    def __init__(self, in_spec: FeatureSpec, out_channels: int = 256, num_outs: int = 5, start_level: int = 0,
                 extra_source: str = "input", relu_before_extra_convs: bool = False):
        super().__init__()
        if extra_source not in ("input", "output"):
            raise UsageError(f"FPN extra_source must be 'input' or 'output', got {extra_source!r}")
        in_channels = in_spec.channels[start_level:]
        if num_outs < len(in_channels):
            raise UsageError(f"FPN num_outs {num_outs} < its {len(in_channels)} input levels")
        self.start_level = start_level
        self.extra_source = extra_source
        self.relu_before_extra_convs = relu_before_extra_convs
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1, act=None) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3, padding=1, act=None)
                                       for _ in in_channels)
        for i in range(num_outs - len(in_channels)):
            c = in_channels[-1] if i == 0 and extra_source == "input" else out_channels
            self.fpn_convs.append(ConvModule(c, out_channels, 3, stride=2, padding=1, act=None))
        strides = list(in_spec.strides[start_level:])
        while len(strides) < num_outs:
            strides.append(strides[-1] * 2)
        self.feature_spec = FeatureSpec((out_channels,) * num_outs, tuple(strides))

    def forward(self, inputs: list[Tensor]) -> list[Tensor]:
        inputs = inputs[self.start_level:]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                                              mode="nearest")
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        for i in range(len(laterals), len(self.fpn_convs)):
            if i == len(laterals):
                x = inputs[-1] if self.extra_source == "input" else outs[-1]
            else:
                x = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
            outs.append(self.fpn_convs[i](x))
        return outs


@register_converter("fpn")
def convert_fpn(sd):
    """mmdet's FPN keys are cvkit's; a detector checkpoint's `neck.` prefix is dropped."""
    return strip_prefix(sd, "neck.")


@register_neck("fpn", family="fpn", converter="fpn", paper=PAPER)
def fpn(in_spec: FeatureSpec, out_channels: int = 256, num_outs: int = 5, start_level: int = 0,
        extra_source: str = "input", relu_before_extra_convs: bool = False) -> FPN:
    return FPN(in_spec, out_channels, num_outs, start_level, extra_source, relu_before_extra_convs)
