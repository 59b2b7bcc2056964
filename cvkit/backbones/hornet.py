"""HorNet: "HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions",
Rao et al., NeurIPS 2022 (arXiv 2207.14284); official code raoyongming/HorNet.

What is new: the recursive gated convolution g^n Conv, which builds order-n spatial interactions
from 1x1 projections and one depthwise conv by repeated gating (x_{k+1} = p_k(x_k) * dw_k), in a
ConvNeXt-like net. The GF variants replace that depthwise conv in stages 3-4 by a global filter
(half the channels through a learned FFT-domain filter, half through a 3x3 depthwise conv).

Input sides are floored at each stride as in the official code (the global filters adapt to any
size); a side shorter than 32 pixels raises CvkitError.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CvkitError
from ..nn import DropPath, FeatureSpec, LayerNorm2d, drop_path_rates
from ..weights import register_converter, strip_prefix
from . import register_backbone

PAPER = ("HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions "
         "(Rao et al., NeurIPS 2022)")


class GlobalLocalFilter(nn.Module):
    """Global filter for gnconv: LN, then the first half of the channels through a 3x3 depthwise
    conv and the second through rfft2 -> learned complex weight -> irfft2 (ortho, float32); the
    halves are interleaved channel by channel (local, global, local, ...) and normalised again.

    The complex weight is stored at its training size (h, w) and resized bilinearly
    (align_corners=True) to the input's rfft2 size on every forward when they differ.
    """

    def __init__(self, dim: int, h: int, w: int):
        super().__init__()
        self.dw = nn.Conv2d(dim // 2, dim // 2, 3, padding=1, groups=dim // 2, bias=False)
        self.complex_weight = nn.Parameter(torch.randn(dim // 2, h, w, 2) * 0.02)
        self.pre_norm = LayerNorm2d(dim)
        self.post_norm = LayerNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(x)
        local, glob = torch.chunk(x, 2, dim=1)
        local = self.dw(local)
        b, c, h, w = glob.shape
        glob = torch.fft.rfft2(glob.float(), dim=(2, 3), norm="ortho")
        weight = self.complex_weight
        if weight.shape[1:3] != glob.shape[2:4]:
            weight = F.interpolate(weight.permute(3, 0, 1, 2), size=glob.shape[2:4], mode="bilinear",
                                   align_corners=True).permute(1, 2, 3, 0)
        glob = torch.fft.irfft2(glob * torch.view_as_complex(weight.contiguous()), s=(h, w), dim=(2, 3),
                                norm="ortho")
        x = torch.stack((local, glob), dim=2).reshape(b, 2 * c, h, w)
        return self.post_norm(x)


class GnConv(nn.Module):
    """Recursive gated conv of order `order`: widths d_i = C / 2^(order-1-i) (smallest first);
    proj_in gives [pwa | abc], dw(abc) / 3 is split by d_i, x = pwa * dw_0, then
    x = pws_i(x) * dw_{i+1}, then proj_out. `gf_size` = (h, w) swaps the 7x7 depthwise conv for
    a GlobalLocalFilter."""

    def __init__(self, dim: int, order: int, gf_size: tuple[int, int] | None = None):
        super().__init__()
        self.dims = [dim // 2 ** i for i in range(order)][::-1]
        self.scale = 1 / 3
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        total = sum(self.dims)
        if gf_size is None:
            self.dwconv = nn.Conv2d(total, total, 7, padding=3, groups=total)
        else:
            self.dwconv = GlobalLocalFilter(total, *gf_size)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.pws = nn.ModuleList(nn.Conv2d(self.dims[i], self.dims[i + 1], 1) for i in range(order - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pwa, abc = torch.split(self.proj_in(x), (self.dims[0], sum(self.dims)), dim=1)
        dw = torch.split(self.dwconv(abc) * self.scale, self.dims, dim=1)
        x = pwa * dw[0]
        for pw, gate in zip(self.pws, dw[1:]):
            x = pw(x) * gate
        return self.proj_out(x)


class Block(nn.Module):
    """x += gamma1 * gnconv(LN x); x += gamma2 * MLP(LN x), the MLP (4C, GELU) in NHWC."""

    def __init__(self, dim: int, order: int, gf_size: tuple[int, int] | None, drop_path: float):
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.gnconv = GnConv(dim, order, gf_size=gf_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma1 = nn.Parameter(torch.full((dim,), 1e-6))
        self.gamma2 = nn.Parameter(torch.full((dim,), 1e-6))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1[:, None, None] * self.gnconv(self.norm1(x)))
        y = self.pwconv2(self.act(self.pwconv1(self.norm2(x.permute(0, 2, 3, 1)))))
        return x + self.drop_path((self.gamma2 * y).permute(0, 3, 1, 2))


class HorNet(nn.Module):
    """HorNet. Stem conv 4x4/s4 + LN; downsample LN then conv 2x2/s2; gnconv orders 2, 3, 4, 5.
    `gf_sizes` gives, per stage, the (h, w) of a global filter or None for the 7x7 dw conv.

    num_classes=0: dense form (the official mmdet/mmseg backbone), outputs = LN `norm{i}` of the
    chosen stages. num_classes>0: classifier, `forward` gives the raw stage outputs and `classify`
    the logits (GAP -> LayerNorm -> Linear).
    """

    def __init__(self, base_dim: int = 64, depths=(2, 3, 18, 2), gf_sizes=(None, None, None, None),
                 out_indices=(0, 1, 2, 3), num_classes: int = 0, drop_path_rate: float = 0.0):
        super().__init__()
        dims = [base_dim * 2 ** i for i in range(4)]
        self.out_indices = tuple(out_indices)
        self.num_classes = num_classes
        self.downsample_layers = nn.ModuleList([nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0]))])
        self.downsample_layers.extend(nn.Sequential(LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dims[i], 2, 2))
                                      for i in range(1, 4))
        dpr = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.ModuleList(
            nn.Sequential(*[Block(dims[i], i + 2, gf_sizes[i], dpr[i][j]) for j in range(depths[i])])
            for i in range(4))
        self.feature_spec = FeatureSpec(tuple(dims), (4, 8, 16, 32)).select(self.out_indices)
        if num_classes:
            self.norm = nn.LayerNorm(dims[3], eps=1e-6)
            self.head = nn.Linear(dims[3], num_classes)
        else:
            for i in self.out_indices:
                self.add_module(f"norm{i}", LayerNorm2d(dims[i]))
            self.optional_keys = tuple(f"norm{i}." for i in self.out_indices)
            self.ignored_keys = ("norm.", "head.", "norm0.", "norm1.", "norm2.", "norm3.")

    def forward_features(self, x: torch.Tensor, last: int = 3) -> list[torch.Tensor]:
        """Outputs of stages 0..last (before any per-output norm)."""
        if min(x.shape[-2:]) < 32:
            raise CvkitError(f"HorNet needs input sides of at least 32 pixels, got {tuple(x.shape[-2:])}")
        outs = []
        for down, stage in zip(self.downsample_layers[:last + 1], self.stages[:last + 1]):
            x = stage(down(x))
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.forward_features(x, max(self.out_indices))
        if self.num_classes:
            return [feats[i] for i in self.out_indices]
        return [getattr(self, f"norm{i}")(feats[i]) for i in self.out_indices]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage output."""
        return self.head(self.norm(x.mean((-2, -1))))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[-1])


# Global-filter sizes are the rfft2 sizes of the 14x14 and 7x7 maps of a 224 input.
VARIANTS = {
    "t_7x7": {"base_dim": 64},
    "t_gf": {"base_dim": 64, "gf_sizes": (None, None, (14, 8), (7, 4))},
}


@register_converter("hornet")
def convert_hornet(sd: dict) -> dict:
    """Official classifier keys are cvkit's; the official mmdet/mmseg backbones add `backbone.`."""
    return strip_prefix(sd, "backbone.")


@register_backbone("hornet_t_7x7", aliases=("hornet_tiny_7x7",), family="hornet", converter="hornet",
                   paper=PAPER)
def hornet_t_7x7(**kwargs) -> HorNet:
    """HorNet-T with 7x7 depthwise convs in every gnconv."""
    return HorNet(**{**VARIANTS["t_7x7"], **kwargs})


@register_backbone("hornet_t_gf", aliases=("hornet_tiny_gf",), family="hornet", converter="hornet",
                   paper=PAPER)
def hornet_t_gf(**kwargs) -> HorNet:
    """HorNet-T with global filters in stages 3 and 4."""
    return HorNet(**{**VARIANTS["t_gf"], **kwargs})
