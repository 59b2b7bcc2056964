"""ChannelMapper: the neck of Deformable DETR ("Deformable DETR: Deformable Transformers for End-to-End
Object Detection", Zhu et al., ICLR 2021, arXiv 2010.04159) and Panoptic SegFormer, in mmdet's layout.

What it does: maps every backbone level to one width with a 1x1 conv + GroupNorm (no activation),
and adds coarser levels with 3x3 stride-2 convs + GroupNorm, the first of them on the **raw** last
backbone map (not on its mapped version). Keys: `convs.{i}.conv.weight`, `convs.{i}.gn.*`,
`extra_convs.{j}.conv.weight`, `extra_convs.{j}.gn.*`.
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn.spec import FeatureSpec
from ..weights import register_converter, strip_prefix
from . import register_neck

PAPER = "Deformable DETR (Zhu et al., ICLR 2021, arXiv 2010.04159)"


class ConvGN(nn.Module):
    """Conv (no bias) + GroupNorm, no activation (mmcv ConvModule with GN and act_cfg None)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 32):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, bias=False)
        self.gn = nn.GroupNorm(groups, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gn(self.conv(x))


class ChannelMapper(nn.Module):
    """1x1 Conv+GN per input level, then `num_outs - len(inputs)` extra 3x3/2 Conv+GN levels."""

    def __init__(self, in_spec: FeatureSpec, out_channels: int = 256, num_outs: int | None = None,
                 gn_groups: int = 32):
        super().__init__()
        num_outs = len(in_spec) if num_outs is None else num_outs
        self.convs = nn.ModuleList(ConvGN(c, out_channels, 1, groups=gn_groups) for c in in_spec.channels)
        extra = num_outs - len(in_spec)
        self.extra_convs = nn.ModuleList(
            ConvGN(in_spec.channels[-1] if i == 0 else out_channels, out_channels, 3, 2, gn_groups)
            for i in range(extra))
        strides = tuple(in_spec.strides) + tuple(in_spec.strides[-1] * 2 ** (i + 1) for i in range(extra))
        self.feature_spec = FeatureSpec((out_channels,) * num_outs, strides)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = [conv(x) for conv, x in zip(self.convs, features)]
        for i, conv in enumerate(self.extra_convs):
            outs.append(conv(features[-1] if i == 0 else outs[-1]))
        return outs


@register_converter("channel_mapper")
def convert_channel_mapper(sd):
    """mmdet keys are cvkit's; a detector's `neck.` prefix is dropped."""
    return strip_prefix(sd, "neck.")


@register_neck("channel_mapper", family="channel_mapper", converter="channel_mapper", paper=PAPER)
def channel_mapper(in_spec: FeatureSpec, out_channels: int = 256, num_outs: int | None = None) -> ChannelMapper:
    """ChannelMapper (Deformable DETR / Panoptic SegFormer use 256 channels and one extra level)."""
    return ChannelMapper(in_spec, out_channels, num_outs)
