"""Deformable convolution in plain PyTorch: DCNv1 (Dai et al., "Deformable Convolutional Networks",
ICCV 2017, arXiv 1703.06211) and DCNv2 (Zhu et al., "Deformable ConvNets v2", CVPR 2019,
arXiv 1811.11168).

Each kernel tap samples the input at its regular position plus a learned offset (bilinear, zero
outside the image); v2 also scales each sample by a learned mask. `deform_conv2d` follows
`torchvision.ops.deform_conv2d`, whose layout and sampling rule are those of mmcv's kernels:

- offset (N, 2*DG*kh*kw, Ho, Wo): channel dg*2*kh*kw + 2*(i*kw + j) is dy, the next one dx, for
  deformable group dg and kernel tap (i, j) in row-major order; mask (N, DG*kh*kw, Ho, Wo);
- input channel c belongs to deformable group c // (C / DG);
- tap (i, j) of output (oy, ox) samples y = oy*stride - pad + i*dil + dy (x likewise); the value
  is 0 when y <= -1, y >= H, x <= -1 or x >= W, else the bilinear blend of its four neighbours
  with those outside the image taken as 0.

The samples are read with integer indexing (`gather`) on a zero-bordered copy of the input, so
positions are exact (no coordinate normalisation as in `grid_sample`); the result is one grouped
matmul of the sampled columns with the weight.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair


def _sample(input: Tensor, y: Tensor, x: Tensor, mask: Tensor | None) -> Tensor:
    """Bilinear samples (N, C, P) of `input` (N, C, H, W) at float positions y, x (N, DG, P),
    zero outside, with the deformable-convolution rule above; times `mask` (N, DG, P) if given."""
    n, c, h, w = input.shape
    dg = y.shape[1]
    inside = (y > -1) & (y < h) & (x > -1) & (x < w)
    y = torch.where(inside, y, torch.zeros_like(y))
    x = torch.where(inside, x, torch.zeros_like(x))
    y0 = y.floor()
    x0 = x.floor()
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    scale = inside.to(y.dtype) if mask is None else torch.where(inside, mask, torch.zeros_like(mask))
    weights = [(wy * wx * scale).reshape(n * dg, 1, -1) for wy, wx in ((hy, hx), (hy, lx), (ly, hx), (ly, lx))]

    # A one-pixel zero border holds every neighbour of an inside position (y0 in [-1, H-1]).
    wp = w + 2
    padded = F.pad(input, (1, 1, 1, 1)).reshape(n * dg, c // dg, (h + 2) * wp)
    top_left = ((y0.long() + 1) * wp + (x0.long() + 1)).reshape(n * dg, 1, -1)
    out = None
    for weight, shift in zip(weights, (0, 1, wp, wp + 1)):
        values = padded.gather(2, (top_left + shift).expand(-1, padded.shape[1], -1))
        out = values * weight if out is None else out.addcmul_(values, weight)
    return out.reshape(n, c, -1)


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                  stride=1, padding=0, dilation=1, mask: Tensor | None = None) -> Tensor:
    """Deformable convolution with torchvision's signature and semantics (v2 when `mask` is
    given). `weight` is (Cout, Cin/groups, kh, kw); the number of deformable groups is read from
    the offset's channels, the number of groups from the weight's."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    k = kh * kw
    groups = c // c_per_group
    deform_groups = offset.shape[1] // (2 * k)
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if (not deform_groups or offset.shape[1] != 2 * k * deform_groups or c % deform_groups or c % c_per_group
            or tuple(offset.shape[2:]) != (ho, wo)
            or (mask is not None and tuple(mask.shape[1:]) != (deform_groups * k, ho, wo))):
        raise ValueError(f"deform_conv2d: input {tuple(input.shape)}, weight {tuple(weight.shape)}, "
                         f"offset {tuple(offset.shape)} and mask "
                         f"{None if mask is None else tuple(mask.shape)} do not agree "
                         f"(expected offset spatial size {(ho, wo)})")

    # Regular grid positions (integers, exact) plus offsets: (N, DG, K, Ho*Wo).
    dev = input.device
    base_y = ((torch.arange(ho, device=dev) * stride[0] - padding[0])[None, :]
              + (torch.arange(kh, device=dev) * dilation[0])[:, None])       # (kh, Ho)
    base_x = ((torch.arange(wo, device=dev) * stride[1] - padding[1])[None, :]
              + (torch.arange(kw, device=dev) * dilation[1])[:, None])       # (kw, Wo)
    base_y = base_y[:, None, :, None].expand(kh, kw, ho, wo).reshape(k, ho * wo).to(input.dtype)
    base_x = base_x[None, :, None, :].expand(kh, kw, ho, wo).reshape(k, ho * wo).to(input.dtype)
    offset = offset.reshape(n, deform_groups, k, 2, ho * wo)
    y = (base_y + offset[:, :, :, 0]).reshape(n, deform_groups, -1)
    x = (base_x + offset[:, :, :, 1]).reshape(n, deform_groups, -1)

    if mask is not None:
        mask = mask.reshape(n, deform_groups, -1)
    columns = _sample(input, y, x, mask)                                      # (N, C, K*Ho*Wo)
    columns = columns.reshape(n, groups, c_per_group * k, ho * wo)
    out = torch.matmul(weight.reshape(groups, c_out // groups, c_per_group * k), columns)
    out = out.reshape(n, c_out, ho, wo)
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out


class _DeformConvBase(nn.Module):
    """Weight, optional bias and the offset-predicting `conv_offset` (mmcv's `*Pack` layout:
    a conv with the same kernel, stride, padding and dilation, zero-initialised so that training
    starts from the regular convolution)."""

    offset_parts = 2  # offset channels per deformable group and kernel tap

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, deform_groups: int = 1, bias: bool = True):
        super().__init__()
        if in_channels % groups or out_channels % groups or in_channels % deform_groups:
            raise ValueError(f"{type(self).__name__}: channels {in_channels}->{out_channels} must "
                             f"divide into groups {groups} and deform_groups {deform_groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups, self.deform_groups = groups, deform_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.conv_offset = nn.Conv2d(
            in_channels, self.offset_parts * deform_groups * self.kernel_size[0] * self.kernel_size[1],
            self.kernel_size, self.stride, self.padding, self.dilation, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def _deform(self, x: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding,
                             self.dilation, mask)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, deform_groups={self.deform_groups}, bias={self.bias is not None}")


class DeformConv2d(_DeformConvBase):
    """DCNv1 with its own offset branch (mmcv `DeformConv2dPack` keys: `weight`, `bias`,
    `conv_offset.*`): offset = conv_offset(x), 2*DG*kh*kw channels of (dy, dx) pairs."""

    def forward(self, x: Tensor) -> Tensor:
        return self._deform(x, self.conv_offset(x))


class ModulatedDeformConv2d(_DeformConvBase):
    """DCNv2 with its own offset-and-mask branch (mmcv `ModulatedDeformConv2dPack` keys):
    conv_offset(x) has 3*DG*kh*kw channels split into thirds o1, o2, m; offset = cat(o1, o2)
    and mask = sigmoid(m)."""

    offset_parts = 3

    def forward(self, x: Tensor) -> Tensor:
        o1, o2, m = torch.chunk(self.conv_offset(x), 3, dim=1)
        return self._deform(x, torch.cat((o1, o2), dim=1), torch.sigmoid(m))
