"""OpenMMLab-layout conv blocks: `ConvModule` (keys `conv`, `bn`) and `DepthwiseSeparableConv`
(keys `depthwise_conv`, `pointwise_conv`), so mmdet checkpoints of necks and heads load with
their own names. Both fold their BN into the conv in deploy mode (`cvkit.nn.deploy`).
"""
from __future__ import annotations

from torch import Tensor, nn

from .fusion import fuse_conv_bn


class ConvModule(nn.Module):
    """Conv -> optional BN -> optional activation, as mmcv's ConvModule with its default order.
    The conv has a bias only when there is no BN (mmcv's `bias='auto'`)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bn_eps: float | None = None,
                 act: type[nn.Module] | None = nn.ReLU):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation, groups,
                              bias=bn_eps is None)
        if bn_eps is not None:
            self.bn = nn.BatchNorm2d(out_ch, eps=bn_eps)
        self.act = act(inplace=True) if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if hasattr(self, "bn"):
            x = self.bn(x)
        return self.act(x)

    def reparameterize(self) -> None:
        if hasattr(self, "bn"):
            self.conv = fuse_conv_bn(self.conv, self.bn)
            del self.bn


class DepthwiseSeparableConv(nn.Module):
    """Depthwise kxk ConvModule (stride, padding) then a pointwise 1x1 ConvModule, each with BN and
    the activation (mmcv's DepthwiseSeparableConvModule)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 bn_eps: float = 1e-5, act: type[nn.Module] | None = nn.ReLU):
        super().__init__()
        self.depthwise_conv = ConvModule(in_ch, in_ch, kernel_size, stride, padding, groups=in_ch,
                                         bn_eps=bn_eps, act=act)
        self.pointwise_conv = ConvModule(in_ch, out_ch, 1, bn_eps=bn_eps, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))
