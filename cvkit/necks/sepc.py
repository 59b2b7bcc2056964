"""SEPC (Wang et al., "Scale-Equalizing Pyramid Convolution for Object Detection", CVPR 2020,
arXiv 2005.03101), placed after a five-level FPN.

What is new: pyramid convolution (PConv), a 3-D convolution over (scale, height, width) made of
three 2-D convs shared by all levels (stride 2 from the finer level, stride 1 on the level,
stride 1 from the coarser level then upsampled), with integrated batch norm (iBN: one BN over
all levels together); full SEPC makes the convs of levels >= 1 deformable (DCNv1) to equalise
the scales.

Written from the structure notes of the official code (jshilong/SEPC @ 4d8557d,
`sepc/self_mmdet/models/necks/sepc.py`); parameter names follow its checkpoint. Two official
quirks are kept because the released models were trained with them: the final `cconv`/`lconv`
have padding 0, so each output level is 2 px smaller than its input (the coarsest input level
must be at least 3x3, e.g. an image side >= 257 with P7 at stride 128; anchors follow the
output sizes), and the conv of level 0 is always plain.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CvkitError, UsageError
from ..nn.deform_conv import deform_conv2d
from ..nn.spec import FeatureSpec
from ..weights import register_converter, strip_prefix
from . import register_neck

PAPER = ("Scale-Equalizing Pyramid Convolution for Object Detection "
         "(Wang et al., CVPR 2020, arXiv 2005.03101)")


class SepcConv(nn.Module):
    """3x3 conv with bias, shared by the levels; deformable (DCNv1, offsets from `conv_offset`, 18
    channels, same stride and padding) at output levels >= 1 when `deform` is set."""

    def __init__(self, channels: int, stride: int = 1, padding: int = 1, deform: bool = False):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.normal_(self.weight, std=0.01)
        if deform:
            self.conv_offset = nn.Conv2d(channels, 18, 3, stride, padding)
            nn.init.zeros_(self.conv_offset.weight)
            nn.init.zeros_(self.conv_offset.bias)
        self.deform = deform

    def forward(self, x: Tensor, level: int) -> Tensor:
        if self.deform and level >= 1:
            return deform_conv2d(x, self.conv_offset(x), self.weight, self.bias, self.stride, self.padding)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


def integrated_bn(feats: list[Tensor], bn: nn.BatchNorm2d) -> list[Tensor]:
    """One BatchNorm over all levels: flatten each to (N, C, 1, H*W), concatenate, normalise,
    split back (training statistics are shared by the levels)."""
    n, c = feats[0].shape[:2]
    sizes = [f.shape[-2:] for f in feats]
    joint = bn(torch.cat([f.reshape(n, c, 1, -1) for f in feats], dim=-1))
    parts = joint.split([h * w for h, w in sizes], dim=-1)
    return [p.reshape(n, c, h, w) for p, (h, w) in zip(parts, sizes)]


class PConvModule(nn.Module):
    """Pyramid convolution: level l = Pconv[1](x_l) + Pconv[2](x_{l-1}, stride 2)
    + up(Pconv[0](x_{l+1})) (bilinear, align_corners=True), then iBN and ReLU."""

    def __init__(self, channels: int, deform: bool):
        super().__init__()
        self.Pconv = nn.ModuleList([SepcConv(channels, 1, deform=deform), SepcConv(channels, 1, deform=deform),
                                    SepcConv(channels, 2, deform=deform)])
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        out = []
        for level, feat in enumerate(x):
            y = self.Pconv[1](feat, level)
            if level > 0:
                y = y + self.Pconv[2](x[level - 1], level)
            if level < len(x) - 1:
                y = y + F.interpolate(self.Pconv[0](x[level + 1], level), size=y.shape[-2:],
                                      mode="bilinear", align_corners=True)
            out.append(y)
        return [F.relu(y) for y in integrated_bn(out, self.bn)]


class SEPC(nn.Module):
    """`num_pconv` PConvModules, then `cconv`/`lconv` (3x3, padding 0) + iBN + ReLU. `forward`
    returns one (cls_feat, loc_feat) pair per level, for a head's classification and box branches
    (SEPC's RetinaHead has no stacked convs of its own). `deform_pconv` (full SEPC) makes the
    PConv convs deformable; `deform_head` the cconv/lconv (both official configs set it)."""

    def __init__(self, in_spec: FeatureSpec, num_pconv: int = 4, deform_pconv: bool = True,
                 deform_head: bool = True):
        super().__init__()
        channels = in_spec.channels[0]
        if any(c != channels for c in in_spec.channels):
            raise UsageError(f"SEPC shares its convs across levels and needs equal channels on every "
                             f"level (an FPN's outputs), got {in_spec.channels}")
        self.Pconvs = nn.ModuleList(PConvModule(channels, deform_pconv) for _ in range(num_pconv))
        self.cconv = SepcConv(channels, padding=0, deform=deform_head)
        self.lconv = SepcConv(channels, padding=0, deform=deform_head)
        self.cbn = nn.BatchNorm2d(channels)
        self.lbn = nn.BatchNorm2d(channels)
        self.feature_spec = in_spec

    def forward_pconv(self, feats: list[Tensor]) -> list[Tensor]:
        """The PConv stack alone (same sizes as the input levels)."""
        for pconv in self.Pconvs:
            feats = pconv(feats)
        return feats

    def forward_head_features(self, feats: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """cconv/lconv + iBN + ReLU on each level: (cls_feat, loc_feat) pairs, 2 px smaller."""
        small = [i for i, f in enumerate(feats) if min(f.shape[-2:]) < 3]
        if small:
            raise CvkitError(f"SEPC needs every level at least 3x3 (its last convs have no padding); "
                             f"level {small[0]} is {tuple(feats[small[0]].shape[-2:])}: use a larger input")
        cls = integrated_bn([self.cconv(f, level) for level, f in enumerate(feats)], self.cbn)
        loc = integrated_bn([self.lconv(f, level) for level, f in enumerate(feats)], self.lbn)
        return [(F.relu(c), F.relu(r)) for c, r in zip(cls, loc)]

    def forward(self, feats: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        return self.forward_head_features(self.forward_pconv(list(feats)))


@register_converter("sepc")
def convert_sepc(sd):
    """The official SEPC keys are cvkit's. In a detector checkpoint the FPN and SEPC form a list
    neck: SEPC's keys are under `neck.1.` (unverified; inferred from the configs), or under `neck.`
    when SEPC is the only neck."""
    if any(k.startswith("neck.1.") for k in sd):
        return strip_prefix(sd, "neck.1.")
    return strip_prefix(sd, "neck.")


@register_neck("sepc", family="sepc", converter="sepc", paper=PAPER)
def sepc(in_spec: FeatureSpec) -> SEPC:
    """Full SEPC: deformable PConv and cconv/lconv, iBN."""
    return SEPC(in_spec, deform_pconv=True, deform_head=True)


@register_neck("sepc_lite", family="sepc", converter="sepc", paper=PAPER)
def sepc_lite(in_spec: FeatureSpec) -> SEPC:
    """SEPC-lite: plain PConv, deformable cconv/lconv, iBN."""
    return SEPC(in_spec, deform_pconv=False, deform_head=True)

