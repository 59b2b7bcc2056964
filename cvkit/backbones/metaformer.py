"""ConvFormer and CAFormer from "MetaFormer Baselines for Vision" (Yu et al., arXiv 2210.13452,
TPAMI 2024; official code sail-sg/metaformer, `metaformer_baselines.py`).

What is new: the MetaFormer block (norm -> token mixer -> residual, norm -> MLP -> residual) with
plain mixers reaches strong accuracy given StarReLU (s * relu(x)^2 + b), bias-free norms and
per-channel residual scaling. ConvFormer mixes tokens with an inverted separable 7x7 conv in every
stage; CAFormer uses that conv in stages 0-1 and global self-attention in stages 2-3.

Everything inside the network is channels-last (B, H, W, C), as in the official code; the outputs
are the raw stage outputs permuted to NCHW. The official repository has no dense-prediction
wrapper, so the dense form is the classifier without `norm` and `head`. Any input of at least
3x3 pixels is accepted, as officially: multiples of 32 give maps of exactly H/stride, other sizes
follow the convolutions (stem floor((H+1)/4), then halving rounded up). Smaller inputs raise
CvkitError.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CvkitError
from ..nn import DropPath, FeatureSpec, drop_path_rates
from ..weights import register_converter, strip_prefix
from . import register_backbone

_PAPER = "MetaFormer Baselines for Vision (Yu et al., 2022)"


class LayerNormNoBias(nn.Module):
    """LayerNorm over the last (channel) dimension with a weight and no bias, eps 1e-6."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, None, 1e-6)


class StarReLU(nn.Module):
    """StarReLU: s * relu(x)^2 + b with learnable scalars s and b."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.relu(x) ** 2 + self.bias


class Scale(nn.Module):
    """Per-channel multiply (the residual scale of stages 2-3)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class SepConv(nn.Module):
    """Inverted separable conv mixer: Linear C->2C, StarReLU, depthwise 7x7, Linear 2C->C (no biases)."""

    def __init__(self, dim: int):
        super().__init__()
        mid = 2 * dim
        self.pwconv1 = nn.Linear(dim, mid, bias=False)
        self.act1 = StarReLU()
        self.dwconv = nn.Conv2d(mid, mid, 7, padding=3, groups=mid, bias=False)
        self.pwconv2 = nn.Linear(mid, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.pwconv1(x))
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.pwconv2(x)


class Attention(nn.Module):
    """Global multi-head self-attention over all H*W tokens: heads of 32 channels, `qkv` output
    ordered [q | k | v], no biases, no position encoding."""

    head_dim = 32

    def __init__(self, dim: int):
        super().__init__()
        self.num_heads = max(dim // self.head_dim, 1)
        inner = self.num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(b, h, w, -1))


class Mlp(nn.Module):
    """Linear C->4C, StarReLU, Linear 4C->C, no biases."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim, bias=False)
        self.act = StarReLU()
        self.fc2 = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MetaFormerBlock(nn.Module):
    """x = rs1(x) + mixer(norm1(x)); x = rs2(x) + mlp(norm2(x)); rs = per-channel Scale or identity."""

    def __init__(self, dim: int, mixer: str, res_scale: bool, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = LayerNormNoBias(dim)
        self.token_mixer = SepConv(dim) if mixer == "sepconv" else Attention(dim)
        self.res_scale1 = Scale(dim) if res_scale else nn.Identity()
        self.norm2 = LayerNormNoBias(dim)
        self.mlp = Mlp(dim)
        self.res_scale2 = Scale(dim) if res_scale else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_scale1(x) + self.drop_path(self.token_mixer(self.norm1(x)))
        return self.res_scale2(x) + self.drop_path(self.mlp(self.norm2(x)))


class Stem(nn.Module):
    """Conv 7x7 / stride 4 / pad 2 on NCHW, then to NHWC and a bias-free LayerNorm."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, 7, stride=4, padding=2)
        self.post_norm = LayerNormNoBias(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post_norm(self.conv(x).permute(0, 2, 3, 1))


class Downsample(nn.Module):
    """Bias-free LayerNorm, then conv 3x3 / stride 2 / pad 1; NHWC in and out."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.pre_norm = LayerNormNoBias(in_dim)
        self.conv = nn.Conv2d(in_dim, dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(x).permute(0, 3, 1, 2)
        return self.conv(x).permute(0, 2, 3, 1)


class MlpHead(nn.Module):
    """fc1 C->4C, SquaredReLU (relu(x)^2), LayerNorm (eps 1e-5), fc2 -> classes."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.norm = nn.LayerNorm(4 * dim, eps=1e-5)
        self.fc2 = nn.Linear(4 * dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(F.relu(self.fc1(x)) ** 2))


class MetaFormer(nn.Module):
    """MetaFormer network with a token mixer per stage ("sepconv" or "attention").

    `num_classes=0` (dense form): `forward(x)` returns the stage outputs for `out_indices` in
    NCHW; keys are the official classifier's without `norm.*` and `head.*` (ignored when an
    ImageNet checkpoint is loaded). `num_classes>0`: official classifier keys; `classify(x)`
    gives logits (mean over H, W -> LayerNorm -> MlpHead).
    """

    ignored_keys = ("norm.", "head.")

    def __init__(self, depths, dims, mixers, in_chans: int = 3, num_classes: int = 0,
                 out_indices=(0, 1, 2, 3), drop_path_rate: float = 0.0):
        super().__init__()
        if not out_indices or any(i not in range(len(depths)) for i in out_indices):
            raise CvkitError(f"out_indices {tuple(out_indices)} must pick from 0..{len(depths) - 1}")
        self.in_chans = in_chans
        self.out_indices = tuple(out_indices)
        self.downsample_layers = nn.ModuleList(
            [Stem(in_chans, dims[0])] + [Downsample(dims[i - 1], dims[i]) for i in range(1, len(dims))])
        rates = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.ModuleList(
            nn.Sequential(*[MetaFormerBlock(dims[i], mixers[i], res_scale=i >= 2, drop_path=r)
                            for r in rates[i]])
            for i in range(len(depths)))
        self.num_classes = num_classes
        if num_classes > 0:
            self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
            self.head = MlpHead(dims[-1], num_classes)
        self.feature_spec = FeatureSpec(tuple(dims), (4, 8, 16, 32)).select(self.out_indices)

    def _stages(self, x: torch.Tensor, last: int) -> list[torch.Tensor]:
        """NHWC outputs of stages 0..last."""
        if x.ndim != 4 or x.shape[1] != self.in_chans or min(x.shape[-2:]) < 3:
            raise CvkitError(f"MetaFormer expects a Bx{self.in_chans}xHxW image with H, W >= 3, "
                             f"got shape {tuple(x.shape)}")
        outs = []
        for i in range(last + 1):
            x = self.stages[i](self.downsample_layers[i](x))
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = self._stages(x, max(self.out_indices))
        return [outs[i].permute(0, 3, 1, 2).contiguous() for i in self.out_indices]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output (NCHW)."""
        if self.num_classes == 0:
            raise CvkitError("this MetaFormer was built without a classifier (num_classes=0)")
        return self.head(self.norm(x.mean((2, 3))))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the image."""
        last = self._stages(x, len(self.stages) - 1)[-1]
        return self.forward_head(last.permute(0, 3, 1, 2))


@register_converter("metaformer")
def convert_metaformer(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official sail-sg/metaformer state_dict (identity; an OpenMMLab `backbone.` prefix is
    stripped) or timm's `metaformer` layout (`stem`, `stages.i.downsample`, `stages.i.blocks.j`,
    `head.norm`, `head.fc.*`, 1x1-conv weights in the NCHW stages) -> cvkit keys."""
    sd = strip_prefix(sd, "backbone.")
    if "stem.conv.weight" not in sd:
        return dict(sd)
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^stem\.norm\.", "downsample_layers.0.post_norm.", k)
        k = re.sub(r"^stem\.", "downsample_layers.0.", k)
        k = re.sub(r"^stages\.(\d+)\.downsample\.norm\.", r"downsample_layers.\1.pre_norm.", k)
        k = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
        k = re.sub(r"^stages\.(\d+)\.blocks\.", r"stages.\1.", k)
        k = re.sub(r"^head\.norm\.", "norm.", k)
        k = re.sub(r"^head\.fc\.", "head.", k)
        if k.startswith("stages.") and v.ndim == 4 and v.shape[-2:] == (1, 1):
            v = v.flatten(1)  # timm's 1x1 convs are the official Linears
        out[k] = v
    return out


_VARIANTS = {
    "s18": {"depths": (3, 3, 9, 3), "dims": (64, 128, 320, 512)},
    "s36": {"depths": (3, 12, 18, 3), "dims": (64, 128, 320, 512)},
    "m36": {"depths": (3, 12, 18, 3), "dims": (96, 192, 384, 576)},
    "b36": {"depths": (3, 12, 18, 3), "dims": (128, 256, 512, 768)},
}
_MIXERS = {"convformer": ("sepconv",) * 4, "caformer": ("sepconv", "sepconv", "attention", "attention")}
# Official builder names for the other releases of each body (384 px, ImageNet-21k).
_RELEASES = ("_384", "_in21ft1k", "_384_in21ft1k", "_in21k")


def _register(family: str, size: str) -> None:
    name = f"{family}_{size}"

    def build(**kwargs) -> MetaFormer:
        return MetaFormer(mixers=_MIXERS[family], **_VARIANTS[size], **kwargs)

    build.__name__ = name
    build.__doc__ = f"{name}: {_VARIANTS[size]}, token mixers {_MIXERS[family]}."
    register_backbone(name, aliases=tuple(name + r for r in _RELEASES), family="metaformer",
                      converter="metaformer", paper=_PAPER)(build)


for _family in _MIXERS:
    for _size in _VARIANTS:
        _register(_family, _size)
