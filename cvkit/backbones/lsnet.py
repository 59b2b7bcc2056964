"""LSNet: "LSNet: See Large, Focus Small", Wang et al., CVPR 2025 (arXiv 2503.23135); official
code jameslahm/lsnet.

What is new: LS convolution, modelled on how the eye sees. A large-kernel depthwise "perception"
branch (LKP) looks at a wide context and predicts, for every pixel, a small 3x3 kernel; small-kernel
aggregation (SKA) then mixes each pixel's neighbourhood with its own kernel. Lightweight nets
built from it (RepVGG-style depthwise blocks, SE, LS convs, attention in the last stage) are fast
and accurate.

cvkit keeps the official layout (`patch_embed`, `blocks1..4`, `head`). The feature strides are
8, 16, 32 and 64 (the stem has three stride-2 convs). The dense form is the official
detection/segmentation wrapper: its stage-4 attention has a 14x14 relative-position bias table,
and the gathered 196x196 bias matrix is resized bicubically to the actual NxN on every forward,
so any input size works. The classifier keeps the official 4x4 table, so its stage-4 map must be
exactly 4x4 (inputs about 224x224, ceil(H/64) = ceil(W/64) = 4). Any other size raises
CvkitError when stage 4 runs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CvkitError
from ..nn import FeatureSpec, fuse_bn_linear, fuse_conv_bn, make_divisible
from ..weights import register_converter, strip_prefix
from . import register_backbone
from ._base import StageBackbone

PAPER = "LSNet: See Large, Focus Small (Wang et al., CVPR 2025, arXiv 2503.23135)"

DENSE_RESOLUTION = 14
"""Side of the stage-4 bias table in the official dense wrapper."""


def ska(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Small-kernel aggregation: a depthwise KxK conv (stride 1, zero "same" padding) with a
    different kernel at every pixel of every sample.

    x is (N, C, H, W); w is (N, Cw, K*K, H, W), taps row-major. Channel c uses kernel c % Cw, so
    channels c, c + Cw, c + 2Cw, ... share one kernel (interleaved, not contiguous blocks):
    out[n, c, i, j] = sum_{p,q} x[n, c, i - pad + p, j - pad + q] * w[n, c % Cw, p*K + q, i, j].
    The official op is a Triton kernel; this is the same sum in plain PyTorch.
    """
    n, c, h, wd = x.shape
    cw, taps = w.shape[1], w.shape[2]
    k = math.isqrt(taps)
    pad = (k - 1) // 2
    xp = F.pad(x, (pad, pad, pad, pad)).view(n, c // cw, cw, h + 2 * pad, wd + 2 * pad)
    w = w.unsqueeze(1)
    out = 0
    for t in range(taps):
        p, q = divmod(t, k)
        out = out + xp[..., p:p + h, q:q + wd] * w[:, :, :, t]
    return out.reshape(n, c, h, wd)


class Conv2d_BN(nn.Sequential):
    """Conv2d without bias + BatchNorm2d (keys `c`, `bn`); deploys as one biased conv."""

    def __init__(self, cin: int, cout: int, ks: int = 1, stride: int = 1, pad: int = 0,
                 groups: int = 1, bn_weight_init: float = 1.0):
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def reparameterize(self) -> nn.Conv2d:
        return fuse_conv_bn(self.c, self.bn)


class BN_Linear(nn.Sequential):
    """BatchNorm1d + Linear (keys `bn`, `l`): the classifier head; deploys as one Linear."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.add_module("bn", nn.BatchNorm1d(cin))
        self.add_module("l", nn.Linear(cin, cout))
        nn.init.trunc_normal_(self.l.weight, std=0.02)
        nn.init.zeros_(self.l.bias)

    def reparameterize(self) -> nn.Linear:
        return fuse_bn_linear(self.bn, self.l)


class Residual(nn.Module):
    """x + m(x) (key prefix `m.`)."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)


class RepVGGDW(nn.Module):
    """dw 3x3 Conv-BN + dw 1x1 Conv-BN + identity; deploys as one biased dw 3x3 conv."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = Conv2d_BN(dim, dim, 3, 1, 1, groups=dim)
        self.conv1 = Conv2d_BN(dim, dim, 1, 1, 0, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.conv1(x) + x

    @torch.no_grad()
    def reparameterize(self) -> nn.Conv2d:
        # deploy() works bottom-up, so `conv` and `conv1` are already fused biased convs here.
        conv, conv1 = self.conv, self.conv1
        weight = conv.weight + F.pad(conv1.weight, (1, 1, 1, 1))
        weight[:, 0, 1, 1] += 1.0
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, groups=conv.groups).to(weight)
        fused.weight.copy_(weight)
        fused.bias.copy_(conv.bias + conv1.bias)
        return fused


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(relu(fc1(mean_hw(x))))), reduction 1/4 (timm's SqueezeExcite)."""

    def __init__(self, dim: int, rd_ratio: float = 0.25):
        super().__init__()
        rd = make_divisible(dim * rd_ratio, 8)
        self.fc1 = nn.Conv2d(dim, rd, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(rd, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * s.sigmoid()


class LKP(nn.Module):
    """Large-kernel perception: 1x1 to C/2, ReLU, dw 7x7, 1x1, ReLU, 1x1 (bias) to K*K*C/groups,
    GroupNorm with one group per predicted kernel. Returns (N, C/groups, K*K, H, W)."""

    def __init__(self, dim: int, lks: int = 7, sks: int = 3, groups: int = 8):
        super().__init__()
        self.cv1 = Conv2d_BN(dim, dim // 2)
        self.act = nn.ReLU()
        self.cv2 = Conv2d_BN(dim // 2, dim // 2, lks, pad=(lks - 1) // 2, groups=dim // 2)
        self.cv3 = Conv2d_BN(dim // 2, dim // 2)
        self.cv4 = nn.Conv2d(dim // 2, sks * sks * dim // groups, 1)
        self.norm = nn.GroupNorm(dim // groups, sks * sks * dim // groups)
        self.kernels, self.taps = dim // groups, sks * sks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.cv3(self.cv2(self.act(self.cv1(x)))))
        w = self.norm(self.cv4(x))
        return w.view(w.shape[0], self.kernels, self.taps, *w.shape[-2:])


class LSConv(nn.Module):
    """LS convolution: BN(SKA(x, LKP(x))) + x ("see large" with LKP, "focus small" with SKA)."""

    def __init__(self, dim: int):
        super().__init__()
        self.lkp = LKP(dim)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(ska(x, self.lkp(x))) + x


def bias_index_table(resolution: int) -> torch.Tensor:
    """(R², R²) index of the (|dy|, |dx|) offset between grid points of a row-major RxR grid,
    offsets numbered in order of first appearance (which is dy * R + dx)."""
    r = torch.arange(resolution)
    y, x = r.repeat_interleave(resolution), r.repeat(resolution)
    return (y[:, None] - y[None]).abs() * resolution + (x[:, None] - x[None]).abs()


class Attention(nn.Module):
    """Stage-4 multi-head self-attention (LeViT/EfficientViT style) with a learned
    relative-position bias per head.

    qkv is one 1x1 Conv-BN split [q of all heads | k | v]; q goes through a dw 3x3 Conv-BN;
    attn = softmax(q^T k / sqrt(key_dim) + B); proj = ReLU, 1x1 Conv-BN. B[h] is gathered from
    `attention_biases` over a `resolution`² grid. With `resize_bias` (the dense wrapper) the
    gathered (heads, R², R²) matrix is resized bicubically, as an image, to the actual (N, N);
    without it N must equal R².
    """

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, resolution: int,
                 resize_bias: bool = False):
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.scale = key_dim ** -0.5
        self.nh_kd = key_dim * num_heads
        self.dh = int(attn_ratio * key_dim) * num_heads
        self.resolution, self.resize_bias = resolution, resize_bias
        self.qkv = Conv2d_BN(dim, self.dh + 2 * self.nh_kd)
        self.proj = nn.Sequential(nn.ReLU(), Conv2d_BN(self.dh, dim, bn_weight_init=0.0))
        self.dw = Conv2d_BN(self.nh_kd, self.nh_kd, 3, 1, 1, groups=self.nh_kd)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))
        self.register_buffer("attention_bias_idxs", bias_index_table(resolution))

    def bias(self, n: int) -> torch.Tensor:
        """The (heads, n, n) bias for a map of n = H*W positions."""
        bias = self.attention_biases[:, self.attention_bias_idxs]
        if self.resize_bias:
            return F.interpolate(bias[None], size=(n, n), mode="bicubic", align_corners=False)[0]
        if n != bias.shape[-1]:
            raise CvkitError(f"the LSNet classifier's stage-4 attention needs a {self.resolution}x"
                             f"{self.resolution} map (inputs about 224x224), got {n} positions; use the "
                             "dense form (num_classes=0) for other input sizes")
        return bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        n = h * w
        q, k, v = self.qkv(x).split([self.nh_kd, self.nh_kd, self.dh], dim=1)
        q = self.dw(q).view(b, self.num_heads, -1, n)
        k = k.reshape(b, self.num_heads, -1, n)
        v = v.reshape(b, self.num_heads, -1, n)
        attn = ((q.transpose(-2, -1) @ k) * self.scale + self.bias(n)).softmax(dim=-1)
        return self.proj((v @ attn.transpose(-2, -1)).reshape(b, -1, h, w))


class FFN(nn.Module):
    """1x1 Conv-BN to `hidden`, ReLU, 1x1 Conv-BN back."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.pw1 = Conv2d_BN(dim, hidden)
        self.act = nn.ReLU()
        self.pw2 = Conv2d_BN(hidden, dim, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x)))


class Block(nn.Module):
    """Block at depth d of a stage: even d = RepVGGDW + SE, odd d = LSConv (stages 1-3) or
    Residual(Attention) (stage 4); then Residual(FFN with ratio 2). No outer residual."""

    def __init__(self, dim: int, depth: int, attention: dict | None):
        super().__init__()
        if depth % 2 == 0:
            self.mixer = RepVGGDW(dim)
            self.se = SqueezeExcite(dim)
        else:
            self.mixer = Residual(Attention(dim, **attention)) if attention else LSConv(dim)
            self.se = nn.Identity()
        self.ffn = Residual(FFN(dim, 2 * dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.se(self.mixer(x)))


class LSNet(StageBackbone):
    """LSNet network. `blocks{i+1}` is stage i; stages after the first open with a dw 3x3/s2
    Conv-BN and a 1x1 Conv-BN (indices 0, 1), so the block at depth d sits at index d + 2.

    `num_classes=0` (dense form, the official detection/segmentation wrapper): `forward(x)`
    returns the raw outputs of blocks{i+1} for i in `out_indices` (strides 8, 16, 32, 64); the
    stage-4 attention bias (14x14 table) is resized to the actual map, so any input size works.
    `num_classes>0` (the official classifier): the same `forward`, with a 4x4 bias table (the
    stage-4 map must be 4x4); `forward_head` / `classify` give logits, averaged over `head` and
    `head_dist` when `distillation` is set (the distilled checkpoints).
    """

    def __init__(self, dims=(64, 128, 256, 384), depths=(0, 2, 8, 10), num_heads=(3, 3, 3, 4),
                 key_dim: int = 16, out_indices=(0, 1, 2, 3), num_classes: int = 0,
                 distillation: bool = False):
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.num_classes = num_classes
        c0 = dims[0]
        self.patch_embed = nn.Sequential(
            Conv2d_BN(3, c0 // 4, 3, 2, 1), nn.ReLU(), Conv2d_BN(c0 // 4, c0 // 2, 3, 2, 1), nn.ReLU(),
            Conv2d_BN(c0 // 2, c0, 3, 2, 1))
        dense = num_classes == 0
        attention = {"key_dim": key_dim, "num_heads": num_heads[3],
                     "attn_ratio": dims[3] / (key_dim * num_heads[3]),
                     "resolution": DENSE_RESOLUTION if dense else 4, "resize_bias": dense}
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            layers = []
            if i > 0:
                layers += [Conv2d_BN(dims[i - 1], dims[i - 1], 3, 2, 1, groups=dims[i - 1]),
                           Conv2d_BN(dims[i - 1], dim, 1)]
            layers += [Block(dim, d, attention if i == 3 else None) for d in range(depth)]
            self.add_module(f"blocks{i + 1}", nn.Sequential(*layers))
        self.feature_spec = FeatureSpec(tuple(dims), (8, 16, 32, 64)).select(self.out_indices)
        if dense:
            self.ignored_keys = ("head.", "head_dist.")
        else:
            self.head = BN_Linear(dims[3], num_classes)
            self.head_dist = BN_Linear(dims[3], num_classes) if distillation else None

    def forward_features(self, x: torch.Tensor, last: int = 3) -> list[torch.Tensor]:
        """Raw outputs of blocks1..blocks{last + 1}."""
        x = self.patch_embed(x)
        outs = []
        for i in range(last + 1):
            x = getattr(self, f"blocks{i + 1}")(x)
            outs.append(x)
        return outs

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output: global average pool -> BN1d -> Linear."""
        x = x.mean((2, 3))
        if self.head_dist is None:
            return self.head(x)
        return (self.head(x) + self.head_dist(x)) / 2

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[-1])


def _convert(sd: dict, resolution: int | None) -> dict:
    sd = strip_prefix(sd, "backbone.")
    out = {}
    for k, v in sd.items():
        if k.endswith("attention_bias_idxs"):
            continue
        if k.endswith("attention_biases"):
            side = math.isqrt(v.shape[1])
            if resolution and side != resolution:
                v = F.interpolate(v.reshape(1, -1, side, side), size=(resolution, resolution),
                                  mode="bicubic", align_corners=False).reshape(v.shape[0], -1)
                side = resolution
            out[k[:-len("biases")] + "bias_idxs"] = bias_index_table(side)
        out[k] = v
    return out


@register_converter("lsnet")
def convert_lsnet(sd: dict) -> dict:
    """Any LSNet checkpoint -> cvkit's dense form: the official classification state_dict
    (`["model"]`) or the detection/segmentation wrapper's (`backbone.` prefix dropped). As the
    official wrapper's loader does, stage-4 bias tables of another size are resized bicubically
    through their sqrt(L) square to 14x14. `attention_bias_idxs` are recomputed (a pure function
    of the table size)."""
    return _convert(sd, DENSE_RESOLUTION)


@register_converter("lsnet_cls")
def convert_lsnet_cls(sd: dict) -> dict:
    """An official LSNet classification checkpoint -> cvkit's classifier form (num_classes>0):
    the same keys, with `attention_bias_idxs` recomputed and the bias tables kept as they are."""
    return _convert(sd, None)


VARIANTS = {
    "t": {"dims": (64, 128, 256, 384), "depths": (0, 2, 8, 10)},
    "s": {"dims": (96, 192, 320, 448), "depths": (1, 2, 8, 10)},
    "b": {"dims": (128, 256, 384, 512), "depths": (4, 6, 8, 10)},
}
ALIASES = {"t": ("lsnet_tiny",), "s": ("lsnet_small",), "b": ("lsnet_base",)}


def _register(variant: str) -> None:
    def build(**kwargs) -> LSNet:
        return LSNet(**{**VARIANTS[variant], **kwargs})

    build.__name__ = f"lsnet_{variant}"
    register_backbone(f"lsnet_{variant}", aliases=ALIASES[variant], family="lsnet", converter="lsnet",
                      paper=PAPER)(build)


for _v in VARIANTS:
    _register(_v)
