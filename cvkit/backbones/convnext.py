"""ConvNeXt: "A ConvNet for the 2020s", Liu et al., CVPR 2022 (arXiv 2201.03545; official code
facebookresearch/ConvNeXt).

What is new: a plain ResNet modernised step by step towards a Swin Transformer's design
(patchify stem, 7x7 depthwise conv, inverted bottleneck MLP, LayerNorm, GELU, few activations,
separate downsampling layers) reaches transformer accuracy with convolutions only.

cvkit keeps the official layout (`downsample_layers.*`, `stages.i.j.*`); the dense form is the
official mmdet/mmseg wrapper (per-output LayerNorms `norm0..3`). timm's layout, including the
conv-MLP form of atto/femto/pico/nano (1x1 convs for the MLP), converts to it. Input sides are
floored at each stride as in the official code; a side shorter than 32 pixels raises CvkitError.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import CvkitError
from ..nn import DropPath, FeatureSpec, LayerNorm2d, drop_path_rates
from ..weights import register_converter, strip_prefix
from . import register_backbone

PAPER = "A ConvNet for the 2020s (Liu et al., CVPR 2022, arXiv 2201.03545)"


class Block(nn.Module):
    """dw 7x7 -> LayerNorm (NHWC) -> Linear 4C -> GELU -> Linear C -> * gamma -> + input."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init_value: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class ConvNeXt(nn.Module):
    """ConvNeXt network.

    `num_classes=0` (dense form, the official mmdet/mmseg wrapper): `forward(x)` returns
    `norm{i}(stage i output)` for i in `out_indices` (strides 4, 8, 16, 32). An ImageNet
    checkpoint loads into it: its `norm`/`head` are ignored and `norm0..3` keep weight 1, bias 0.
    `num_classes>0` (the official classifier): `forward(x)` returns the raw stage outputs for
    `out_indices`, and `forward_head` / `classify` give logits.
    """

    def __init__(self, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), drop_path_rate: float = 0.0,
                 layer_scale_init_value: float = 1e-6, out_indices=(0, 1, 2, 3), num_classes: int = 0):
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0]))]
            + [nn.Sequential(LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dims[i], 2, stride=2))
               for i in range(1, len(dims))])
        dpr = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.ModuleList(
            nn.Sequential(*[Block(dims[i], dpr[i][j], layer_scale_init_value) for j in range(depths[i])])
            for i in range(len(depths)))
        self.feature_spec = FeatureSpec(tuple(dims), (4, 8, 16, 32)).select(self.out_indices)
        self.num_classes = num_classes
        if num_classes > 0:
            self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
            self.head = nn.Linear(dims[-1], num_classes)
        else:
            for i in self.out_indices:
                self.add_module(f"norm{i}", LayerNorm2d(dims[i]))
            self.optional_keys = tuple(f"norm{i}." for i in self.out_indices)
            self.ignored_keys = ("norm.", "head.")
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor, last: int = 3) -> list[torch.Tensor]:
        """Raw outputs of stages 0..last."""
        if min(x.shape[-2:]) < 32:
            raise CvkitError(f"ConvNeXt needs input sides of at least 32 pixels, got "
                             f"{tuple(x.shape[-2:])}")
        outs = []
        for down, stage in zip(self.downsample_layers[:last + 1], self.stages[:last + 1]):
            x = stage(down(x))
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = self.forward_features(x, max(self.out_indices))
        if self.num_classes > 0:
            return [outs[i] for i in self.out_indices]
        return [getattr(self, f"norm{i}")(outs[i]) for i in self.out_indices]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output: global average pool -> LayerNorm -> Linear."""
        return self.head(self.norm(x.mean((2, 3))))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[-1])


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)


_TIMM_RENAMES = ((r"^stem\.", "downsample_layers.0."),
                 (r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1."),
                 (r"^stages\.(\d+)\.blocks\.", r"stages.\1."),
                 (r"\.conv_dw\.", ".dwconv."), (r"\.mlp\.fc1\.", ".pwconv1."), (r"\.mlp\.fc2\.", ".pwconv2."),
                 (r"^head\.norm\.", "norm."), (r"^head\.fc\.", "head."))


@register_converter("convnext_timm")
def convert_convnext_timm(sd):
    """timm's layout -> the official one: `stem` -> `downsample_layers.0`,
    `stages.i.downsample` -> `downsample_layers.i`, `stages.i.blocks.j` -> `stages.i.j`,
    `conv_dw` / `mlp.fc1` / `mlp.fc2` -> `dwconv` / `pwconv1` / `pwconv2` (the conv-MLP's 1x1
    kernels flattened to Linear weights), `head.norm` / `head.fc` -> `norm` / `head`."""
    out = {}
    for k, v in sd.items():
        for pattern, repl in _TIMM_RENAMES:
            k = re.sub(pattern, repl, k)
        if k.endswith(("pwconv1.weight", "pwconv2.weight")) and v.ndim == 4:
            v = v.flatten(1)
        out[k] = v
    return out


@register_converter("convnext")
def convert_convnext(sd):
    """Any ConvNeXt checkpoint -> cvkit: the official classification state_dict (`["model"]`) and
    the mmdet/mmseg wrapper's are cvkit's own keys (an OpenMMLab `backbone.` prefix is dropped);
    timm's layout is renamed by `convert_convnext_timm`."""
    sd = strip_prefix(sd, "backbone.")
    if any(k.startswith("stem.") or ".blocks." in k for k in sd):
        return convert_convnext_timm(sd)
    return sd


VARIANTS = {
    "atto": {"depths": (2, 2, 6, 2), "dims": (40, 80, 160, 320)},
    "femto": {"depths": (2, 2, 6, 2), "dims": (48, 96, 192, 384)},
    "pico": {"depths": (2, 2, 6, 2), "dims": (64, 128, 256, 512)},
    "nano": {"depths": (2, 2, 8, 2), "dims": (80, 160, 320, 640)},
    "t": {"depths": (3, 3, 9, 3), "dims": (96, 192, 384, 768)},
    "s": {"depths": (3, 3, 27, 3), "dims": (96, 192, 384, 768)},
    "b": {"depths": (3, 3, 27, 3), "dims": (128, 256, 512, 1024)},
}
ALIASES = {"t": ("convnext_tiny",), "s": ("convnext_small",), "b": ("convnext_base",)}


def _register(variant: str) -> None:
    def build(**kwargs) -> ConvNeXt:
        return ConvNeXt(**{**VARIANTS[variant], **kwargs})

    build.__name__ = f"convnext_{variant}"
    register_backbone(f"convnext_{variant}", aliases=ALIASES.get(variant, ()), family="convnext",
                      converter="convnext", paper=PAPER)(build)


for _v in VARIANTS:
    _register(_v)
