"""UniRepLKNet: "UniRepLKNet: A Universal Perception Large-Kernel ConvNet for Audio, Video, Point
Cloud, Time-Series and Image Recognition", Ding et al., CVPR 2024 (arXiv 2311.15599).

What is new: a 13x13 depthwise kernel trained together with parallel small *dilated* depthwise
branches (the Dilated Reparam Block) that merge into the one large kernel at inference, inside a
ConvNeXt-V2-like block with SE and GRN. Official code: AILab-CVC/UniRepLKNet @ b5677d8,
`unireplknet.py`; submodule names follow its checkpoints (classifier and the dense
`UniRepLKNetBackbone` wrapper with per-output norms `norm0..3`). `cvkit.nn.deploy(model)` gives the
graph of the official `reparameterize_unireplknet()`, whose state_dict has the official deploy keys.

Any input size is accepted: every downsampling conv has padding 1, so output i has
ceil(H / 2^(i+2)) x ceil(W / 2^(i+2)) pixels. A non-NCHW input or a wrong channel count raises
CvkitError.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CvkitError, UsageError
from ..nn import DropPath, FeatureSpec, LayerNorm2d, drop_path_rates, fold_bn, fuse_conv_bn
from ..weights import register_converter, strip_prefix
from . import register_backbone

PAPER = "arXiv:2311.15599"

# Dilated branches (kernel, dilation) that accompany each large kernel (official table).
DILATED_BRANCHES = {
    17: ((5, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
    15: ((5, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    13: ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    11: ((5, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    9: ((5, 1), (5, 2), (3, 3), (3, 4)),
    7: ((5, 1), (3, 2), (3, 3)),
}


def dilated_to_dense(weight: torch.Tensor, dilation: int) -> torch.Tensor:
    """The dense kernel of size r(k-1)+1 equal to a k x k kernel applied with dilation r."""
    if dilation == 1:
        return weight
    k = weight.shape[-1]
    size = dilation * (k - 1) + 1
    dense = weight.new_zeros(*weight.shape[:2], size, size)
    dense[..., ::dilation, ::dilation] = weight
    return dense


class DilatedReparamBlock(nn.Module):
    """Depthwise large kernel + BN, plus dilated depthwise branches each with its own BN, summed.
    `reparameterize()` merges everything into one biased large-kernel conv `lk_origin`."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        if kernel_size not in DILATED_BRANCHES:
            raise UsageError(f"DilatedReparamBlock has no branch table for kernel {kernel_size}; "
                             f"use one of {sorted(DILATED_BRANCHES)}")
        self.lk_origin = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2,
                                   groups=channels, bias=False)
        self.origin_bn = nn.BatchNorm2d(channels)
        self.branches = DILATED_BRANCHES[kernel_size]
        for k, r in self.branches:
            setattr(self, f"dil_conv_k{k}_{r}", nn.Conv2d(channels, channels, k, padding=(r * (k - 1) + 1) // 2,
                                                          dilation=r, groups=channels, bias=False))
            setattr(self, f"dil_bn_k{k}_{r}", nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.origin_bn(self.lk_origin(x))
        for k, r in self.branches:
            out = out + getattr(self, f"dil_bn_k{k}_{r}")(getattr(self, f"dil_conv_k{k}_{r}")(x))
        return out

    @torch.no_grad()
    def reparameterize(self) -> None:
        if isinstance(self.origin_bn, nn.Identity):
            return
        merged = fuse_conv_bn(self.lk_origin, self.origin_bn)
        size = merged.kernel_size[0]
        for k, r in self.branches:
            w, b = fold_bn(getattr(self, f"dil_conv_k{k}_{r}").weight, None, getattr(self, f"dil_bn_k{k}_{r}"))
            w = dilated_to_dense(w, r)
            pad = (size - w.shape[-1]) // 2
            merged.weight += F.pad(w, [pad] * 4)
            merged.bias += b
            delattr(self, f"dil_conv_k{k}_{r}")
            delattr(self, f"dil_bn_k{k}_{r}")
        self.lk_origin, self.origin_bn, self.branches = merged, nn.Identity(), ()


class ToChannelsLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class ToChannelsFirst(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global Response Normalisation (ConvNeXt V2) on NHWC: (gamma * N + 1) * x + beta with
    N = ||x||_2 over H,W divided by its mean over channels (+1e-6). Deploy drops beta (moved into
    the next Linear's bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        y = (self.gamma * n + 1) * x
        return y if self.beta is None else y + self.beta


class SEBlock(nn.Module):
    """Squeeze-and-excitation: GAP -> 1x1 (C -> C/4) -> ReLU -> 1x1 -> sigmoid -> scale."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.down = nn.Conv2d(channels, hidden, 1)
        self.up = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.up(F.relu(self.down(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


class UniRepLKNetBlock(nn.Module):
    """x + gamma * BN(pwconv2(GRN(GELU(pwconv1(SE(BN(dwconv(x)))))))), the FFN in NHWC.
    dwconv is a plain depthwise 3x3 (no bias) or a DilatedReparamBlock for kernels >= 7."""

    def __init__(self, dim: int, kernel_size: int, drop_path: float = 0.0, layer_scale: float = 1e-6):
        super().__init__()
        if kernel_size == 3:
            self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        else:
            self.dwconv = DilatedReparamBlock(dim, kernel_size)
        self.norm = nn.BatchNorm2d(dim)
        self.se = SEBlock(dim, dim // 4)
        self.pwconv1 = nn.Sequential(ToChannelsLast(), nn.Linear(dim, 4 * dim))
        self.act = nn.Sequential(nn.GELU(), GRN(4 * dim))
        self.pwconv2 = nn.Sequential(nn.Linear(4 * dim, dim, bias=False), ToChannelsFirst(), nn.BatchNorm2d(dim))
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.norm(self.dwconv(x)))
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = self.gamma.view(1, -1, 1, 1) * y
        return x + self.drop_path(y)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """The official deploy form: block BN folded into the (already merged) dwconv; GRN beta
        pushed through pwconv2 (W @ beta); pwconv2's BN and the layer scale folded into a biased
        `pwconv2.0`."""
        if self.gamma is None:
            return
        if isinstance(self.dwconv, DilatedReparamBlock):
            self.dwconv.lk_origin = fuse_conv_bn(self.dwconv.lk_origin, self.norm)
        else:
            self.dwconv = fuse_conv_bn(self.dwconv, self.norm)
        self.norm = nn.Identity()
        linear, bn, grn = self.pwconv2[0], self.pwconv2[2], self.act[1]
        w, b = fold_bn(linear.weight, linear.weight @ grn.beta.reshape(-1), bn)
        fused = nn.Linear(linear.in_features, linear.out_features, device=w.device, dtype=w.dtype)
        fused.weight.copy_(w * self.gamma[:, None])
        fused.bias.copy_(b * self.gamma)
        self.pwconv2 = nn.Sequential(fused, ToChannelsFirst())
        grn.beta = None
        self.gamma = None


class UniRepLKNet(nn.Module):
    """UniRepLKNet. `num_classes=0` (default): the dense wrapper (`UniRepLKNetBackbone`), forward
    returns `norm{i}(stage_i)` for `out_indices`. `num_classes>0`: the classifier; forward returns
    the raw stage outputs for `out_indices` and `classify(x)` the logits (GAP -> LN -> Linear)."""

    def __init__(self, depths, dims, kernel_sizes, in_chans: int = 3, num_classes: int = 0,
                 out_indices=(0, 1, 2, 3), drop_path_rate: float = 0.0):
        super().__init__()
        self.out_indices = tuple(out_indices)
        if not self.out_indices or any(i not in range(4) for i in self.out_indices):
            raise UsageError(f"out_indices must be a non-empty subset of 0..3, got {self.out_indices}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        # The dense form stops after the last stage it outputs; the classifier needs all four.
        self.num_stages = 4 if num_classes else max(self.out_indices) + 1
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(in_chans, dims[0] // 2, 3, stride=2, padding=1), LayerNorm2d(dims[0] // 2), nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1), LayerNorm2d(dims[0]))])
        for i in range(1, self.num_stages):
            self.downsample_layers.append(nn.Sequential(
                nn.Conv2d(dims[i - 1], dims[i], 3, stride=2, padding=1), LayerNorm2d(dims[i])))
        rates = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.ModuleList(
            nn.Sequential(*(UniRepLKNetBlock(dims[i], k, rates[i][j]) for j, k in enumerate(kernel_sizes[i])))
            for i in range(self.num_stages))
        if num_classes:
            self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
            self.head = nn.Linear(dims[-1], num_classes)
        else:
            for i in self.out_indices:
                self.add_module(f"norm{i}", LayerNorm2d(dims[i]))
            # An ImageNet checkpoint loads too (no per-output norms, a head we drop), as do
            # checkpoints with the stages / norms this subset leaves out.
            self.optional_keys = tuple(f"norm{i}." for i in self.out_indices)
            left_out = [f"norm{i}." for i in range(4) if i not in self.out_indices]
            left_out += [f"{p}.{i}." for i in range(self.num_stages, 4) for p in ("downsample_layers", "stages")]
            self.ignored_keys = ("norm.", "head.", *left_out)
        self.feature_spec = FeatureSpec(tuple(dims[i] for i in self.out_indices),
                                        tuple(4 * 2 ** i for i in self.out_indices))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Raw outputs of the stages this model has, fine to coarse."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise CvkitError(f"UniRepLKNet expects an N x {self.in_chans} x H x W tensor, got "
                             f"{tuple(x.shape)}")
        outs = []
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.forward_features(x)
        if self.num_classes:
            return [feats[i] for i in self.out_indices]
        return [getattr(self, f"norm{i}")(feats[i]) for i in self.out_indices]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output."""
        if not self.num_classes:
            raise UsageError("this UniRepLKNet is the dense form (num_classes=0) and has no head")
        return self.head(self.norm(x.mean((-2, -1))))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the image."""
        if not self.num_classes:
            raise UsageError("this UniRepLKNet is the dense form (num_classes=0) and has no head")
        return self.forward_head(self.forward_features(x)[-1])


# Variants: depths, C0 (dims C0 x 1, 2, 4, 8) and the kernel pattern repeated over stage 2.
VARIANTS = {
    "a": {"depths": (2, 2, 6, 2), "dim": 40, "stage2": (13,), "alias": "atto"},
    "f": {"depths": (2, 2, 6, 2), "dim": 48, "stage2": (13,), "alias": "femto"},
    "p": {"depths": (2, 2, 6, 2), "dim": 64, "stage2": (13,), "alias": "pico"},
    "n": {"depths": (2, 2, 8, 2), "dim": 80, "stage2": (13,), "alias": "nano"},
    "t": {"depths": (3, 3, 18, 3), "dim": 80, "stage2": (13, 3), "alias": "tiny"},
    "s": {"depths": (3, 3, 27, 3), "dim": 96, "stage2": (13, 3, 3), "alias": "small"},
    "b": {"depths": (3, 3, 27, 3), "dim": 128, "stage2": (13, 3, 3), "alias": "base"},
    "l": {"depths": (3, 3, 27, 3), "dim": 192, "stage2": (13, 3, 3), "alias": "large"},
    "xl": {"depths": (3, 3, 27, 3), "dim": 256, "stage2": (13, 3, 3), "alias": "xlarge"},
}


def variant_args(name: str) -> dict:
    """Plain constructor arguments (depths, dims, kernel_sizes) of variant `name`."""
    v = VARIANTS[name]
    d0, d1, d2, d3 = v["depths"]
    pattern = v["stage2"]
    kernels = ((3,) * d0, (13,) * d1, tuple(pattern[j % len(pattern)] for j in range(d2)), (13,) * d3)
    dims = tuple(v["dim"] * m for m in (1, 2, 4, 8))
    return {"depths": v["depths"], "dims": dims, "kernel_sizes": kernels}


@register_converter("unireplknet")
def convert_unireplknet(sd: dict) -> dict:
    """Official UniRepLKNet keys (classifier, dense wrapper, or OpenMMLab with `backbone.`) to
    cvkit's, which are the same names."""
    return strip_prefix(sd, "backbone.")


def _register(name: str, alias: str) -> None:
    @register_backbone(f"unireplknet_{name}", aliases=(f"unireplknet_{alias}",), family="unireplknet",
                       converter="unireplknet", paper=PAPER)
    def build(**kwargs) -> UniRepLKNet:
        return UniRepLKNet(**variant_args(name), **kwargs)


for _name, _v in VARIANTS.items():
    _register(_name, _v["alias"])
