"""RCNet's neck RCFPN (Zong, Cao & Leng, "RCNet: Reverse Feature Pyramid and Cross-scale Shift
Network for Object Detection", ACM MM 2021, arXiv 2110.12130).

What is new: a reverse feature pyramid (RevFP) that fuses each level with its coarser neighbour
(spatial attention + gated sum) and the already-fused finer level, bottom-up, instead of FPN's
top-down sum; and a cross-scale shift network (CSN) that shifts channel slices across all five
levels (like a temporal shift over scale) and adds global spatial and scale contexts.

Written from the structure notes of the official code (TempleX98/RCNet @ 2bff595,
`mmdet/models/necks/rcfpn.py`); submodule names follow its checkpoint. Inputs: three levels
(C3-C5 of a ResNet, strides s, 2s, 4s); outputs P3-P7 (strides s to 16s). Any input size works:
odd sizes are replicate-padded before each 2x2 max-pool, as in the official code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from ..nn.conv_module import ConvModule
from ..nn.deform_conv import ModulatedDeformConv2d
from ..nn.spec import FeatureSpec
from ..weights import register_converter, strip_prefix
from . import register_neck

PAPER = ("RCNet: Reverse Feature Pyramid and Cross-scale Shift Network for Object Detection "
         "(Zong et al., ACM MM 2021, arXiv 2110.12130)")


def _conv1x1_bn(in_ch: int, out_ch: int, relu: bool = False) -> ConvModule:
    return ConvModule(in_ch, out_ch, 1, bn_eps=1e-5, act=nn.ReLU if relu else None)


class ActConvNorm(nn.Module):
    """mmcv ConvModule with order (act, conv, norm): ReLU -> DCNv2 3x3 (2 deformable groups, no
    bias) -> BN; keys `conv.*`, `bn.*`."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = ModulatedDeformConv2d(channels, channels, 3, padding=1, deform_groups=2, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(F.relu(x)))


def downsample2x(x: Tensor) -> Tensor:
    """Replicate-pad the bottom/right to even size, then 2x2 max-pool (= ceil-mode pooling)."""
    pad_h, pad_w = x.shape[-2] % 2, x.shape[-1] % 2
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return F.max_pool2d(x, 2, 2)


class Downsample2x(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return downsample2x(x)


def _gate_weight(weight: nn.Conv2d, x1: Tensor, x2: Tensor) -> Tensor:
    """w = sigmoid(1x1 conv(cat(GAP x1, GAP x2))), one gate per image."""
    return torch.sigmoid(weight(torch.cat((F.adaptive_avg_pool2d(x1, 1), F.adaptive_avg_pool2d(x2, 1)), 1)))


class FusionNode(nn.Module):
    """One RevFP node: resize the inputs to the first one's size; gated sum w*x1 + (1-w)*a*x2, with
    the gate w from the global means of x1 and x2 and the spatial attention a (softmax over
    positions of a 3x3 conv on both, scaled by temp/sqrt(C), times H*W); with a third input,
    pre_fusion then a second gated sum; post_fusion last."""

    def __init__(self, channels: int, num_inputs: int, attention: bool):
        super().__init__()
        self.weight = nn.ModuleList(nn.Conv2d(2 * channels, 1, 1) for _ in range(num_inputs - 1))
        if attention:
            self.temp = nn.Parameter(torch.ones(1))
            self.spatial_weight = nn.Conv2d(2 * channels, 1, 3, padding=1)
        self.attention = attention
        if num_inputs == 3:
            self.pre_fusion = ActConvNorm(channels)
        self.post_fusion = ActConvNorm(channels)
        # As the official init: gates start at 0.5 and the attention uniform.
        for conv in [*self.weight, *([self.spatial_weight] if attention else [])]:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    @staticmethod
    def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
        # The official code compares sizes as Python tuples.
        if tuple(x.shape[-2:]) < size:
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if tuple(x.shape[-2:]) > size:
            return downsample2x(x)
        return x

    def forward(self, inputs: list[Tensor]) -> Tensor:
        size = tuple(inputs[0].shape[-2:])
        x1, x2, *rest = [inputs[0]] + [self._resize(x, size) for x in inputs[1:]]
        gate = _gate_weight(self.weight[0], x1, x2)  # the gate sees x2 before the attention
        if self.attention:
            n, c, h, w = x2.shape
            logits = self.temp * c ** -0.5 * self.spatial_weight(torch.cat((x1, x2), 1))
            x2 = x2 * (logits.reshape(n, 1, h * w).softmax(-1) * (h * w)).reshape(n, 1, h, w)
        out = gate * x1 + (1 - gate) * x2
        if rest:
            x1 = self.pre_fusion(out)
            gate = _gate_weight(self.weight[1], x1, rest[0])
            out = gate * x1 + (1 - gate) * rest[0]
        return self.post_fusion(out)


class RevFP(nn.Module):
    """Reverse feature pyramid: p3 = F(c3,c4), p4 = F(c4,c5,p3), p5 = F(c5,c6,p4),
    p6 = F(c6,c7,p5), p7 = F(c7,p6) (no attention at p7)."""

    def __init__(self, channels: int):
        super().__init__()
        self.p3 = FusionNode(channels, 2, attention=True)
        self.p4 = FusionNode(channels, 3, attention=True)
        self.p5 = FusionNode(channels, 3, attention=True)
        self.p6 = FusionNode(channels, 3, attention=True)
        self.p7 = FusionNode(channels, 2, attention=False)

    def forward(self, c: list[Tensor]) -> list[Tensor]:
        c3, c4, c5, c6, c7 = c
        p3 = self.p3([c3, c4])
        p4 = self.p4([c4, c5, p3])
        p5 = self.p5([c5, c6, p4])
        p6 = self.p6([c6, c7, p5])
        return [p3, p4, p5, p6, self.p7([c7, p6])]


class ContextBranch(nn.Module):
    """Attention pooling to one (N, C, 1, 1) context: weights = softmax of a 1x1 conv (C -> 1)
    over the pooled axis, then a 1x1 `trans` conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.channel_agg = nn.Conv2d(channels, 1, 1)
        self.trans = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C, A, B); pools over the A*B positions."""
        n, c = x.shape[:2]
        attn = self.channel_agg(x).reshape(n, 1, -1).softmax(-1)            # (N, 1, A*B)
        context = torch.matmul(x.reshape(n, c, -1), attn.transpose(1, 2))   # (N, C, 1)
        return self.trans(context.reshape(n, c, 1, 1))


class SpatialBranch(ContextBranch):
    """Global spatial context of the level-averaged map."""

    def forward(self, feats: Tensor) -> Tensor:
        return super().forward(feats.mean(1))


class ScaleBranch(ContextBranch):
    """Global scale context: attention over the levels' spatial means."""

    def forward(self, feats: Tensor) -> Tensor:
        pooled = feats.mean((3, 4)).transpose(1, 2)                          # (N, C, L)
        return super().forward(pooled.unsqueeze(-1))


class ScaleShift(nn.Module):
    """Four C/16 channel slices rolled along the level axis by -1, +1, -2, +2 (level l takes
    l+1, l-1, l+2, l-2, cyclic), put before the C channels; per level a 1x1 ConvModule
    (C + C/4 -> C, BN, ReLU) and a 1x1 conv, added to the input."""

    def __init__(self, channels: int, num_levels: int):
        super().__init__()
        self.fold = channels // 16
        self.aggregation = nn.ModuleList(
            nn.Sequential(_conv1x1_bn(channels + 4 * self.fold, channels, relu=True),
                          nn.Conv2d(channels, channels, 1))
            for _ in range(num_levels))

    def forward(self, feats: Tensor) -> Tensor:
        f = self.fold
        shifted = [torch.roll(feats[:, :, i * f:(i + 1) * f], shift, dims=1)
                   for i, shift in enumerate((-1, 1, -2, 2))]
        x = torch.cat([*shifted, feats], dim=2)
        return torch.stack([feats[:, level] + agg(x[:, level]) for level, agg in enumerate(self.aggregation)], 1)


class CSN(nn.Module):
    """Cross-scale shift network on P3-P7, working at P4's size: stack, shift, add the spatial
    and scale contexts, then add each level's result back to the pyramid."""

    def __init__(self, channels: int):
        super().__init__()
        self.spatialContext = SpatialBranch(channels)
        self.scaleContext = ScaleBranch(channels)
        self.msm = ScaleShift(channels, num_levels=5)

    def forward(self, p: list[Tensor]) -> list[Tensor]:
        size = p[1].shape[-2:]
        resized = [F.adaptive_max_pool2d(p[0], size), p[1]]
        resized += [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in p[2:]]
        feats = self.msm(torch.stack(resized, 1))                           # (N, L, C, H, W)
        feats = feats + self.spatialContext(feats).unsqueeze(1) + self.scaleContext(feats).unsqueeze(1)
        out = [p[0] + F.interpolate(feats[:, 0], size=p[0].shape[-2:], mode="bilinear", align_corners=False)]
        return out + [x + F.adaptive_max_pool2d(feats[:, i], x.shape[-2:]) for i, x in enumerate(p[1:], 1)]


class RCFPN(nn.Module):
    """RCNet neck: 1x1+BN laterals on three input levels, two extra levels (1x1+BN, 2x2 max-pool),
    RevFP, then CSN. `start_level` skips leading inputs (the official config passes C2..C5 with
    start_level 1; C2 may then be None)."""

    def __init__(self, in_spec: FeatureSpec, out_channels: int = 256, start_level: int = 0):
        super().__init__()
        used = in_spec.channels[start_level:]
        if len(used) != 3:
            raise UsageError(f"RCNet needs exactly three input levels after start_level {start_level} "
                             f"(C3-C5), got channels {in_spec.channels}")
        self.start_level = start_level
        self.lateral_convs = nn.ModuleList(_conv1x1_bn(c, out_channels) for c in used)
        self.extra_downsamples = nn.ModuleList(
            nn.Sequential(_conv1x1_bn(out_channels, out_channels), Downsample2x()) for _ in range(2))
        self.RevFP = RevFP(out_channels)
        self.CSN = CSN(out_channels)
        s = in_spec.strides[start_level]
        self.feature_spec = FeatureSpec((out_channels,) * 5, (s, 2 * s, 4 * s, 8 * s, 16 * s))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        c = [lateral(x) for lateral, x in zip(self.lateral_convs, feats[self.start_level:])]
        for down in self.extra_downsamples:
            c.append(down(c[-1]))
        return self.CSN(self.RevFP(c))


@register_converter("rcnet")
def convert_rcnet(sd):
    """The official RCFPN keys are cvkit's; a detector checkpoint's `neck.` prefix is dropped (with
    the backbone and head keys)."""
    return strip_prefix(sd, "neck.")


@register_neck("rcnet", aliases=("rcfpn",), family="rcnet", converter="rcnet", paper=PAPER)
def rcnet(in_spec: FeatureSpec, out_channels: int = 256, start_level: int = 0) -> RCFPN:
    return RCFPN(in_spec, out_channels, start_level)
