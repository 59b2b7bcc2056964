"""InceptionNeXt: "InceptionNeXt: When Inception Meets ConvNeXt", Yu et al., CVPR 2024
(arXiv 2303.16900; official code sail-sg/inceptionnext).

What is new: ConvNeXt's large depthwise kernel is replaced by an Inception-style depthwise mixer
that leaves most channels untouched and sends small groups through a 3x3, a 1xk and a kx1
depthwise conv, inside a MetaNeXt block (mixer -> BN -> MLP, layer scale, residual).

The official repository has no dense-prediction wrapper, so the dense form returns the raw stage
outputs. Input sides are floored at each stride as in the official code; a side shorter than
32 pixels raises CvkitError. `cvkit.nn.deploy` folds every BatchNorm into a neighbouring conv
and the layer scale into the MLP's last conv.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import CvkitError
from ..nn import DropPath, FeatureSpec, drop_path_rates, fuse_conv_bn
from ..weights import register_converter, strip_prefix
from . import register_backbone
from ._base import StageBackbone

PAPER = "InceptionNeXt: When Inception Meets ConvNeXt (Yu et al., CVPR 2024, arXiv 2303.16900)"


class InceptionDWConv2d(nn.Module):
    """Channels split in order [identity | dw 3x3 | dw 1xk | dw kx1], each conv group
    `int(C * branch_ratio)` wide, and concatenated back in the same order."""

    def __init__(self, dim: int, band_kernel_size: int = 11, branch_ratio: float = 0.125):
        super().__init__()
        gc = int(dim * branch_ratio)
        k = band_kernel_size
        self.dwconv_hw = nn.Conv2d(gc, gc, 3, padding=1, groups=gc)
        self.dwconv_w = nn.Conv2d(gc, gc, (1, k), padding=(0, k // 2), groups=gc)
        self.dwconv_h = nn.Conv2d(gc, gc, (k, 1), padding=(k // 2, 0), groups=gc)
        self.split_sizes = (dim - 3 * gc, gc, gc, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_id, x_hw, x_w, x_h = torch.split(x, self.split_sizes, dim=1)
        return torch.cat((x_id, self.dwconv_hw(x_hw), self.dwconv_w(x_w), self.dwconv_h(x_h)), dim=1)


class ConvMlp(nn.Module):
    """1x1 conv -> GELU -> 1x1 conv."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MetaNeXtBlock(nn.Module):
    """x + gamma * MLP(BN(mixer(x)))."""

    def __init__(self, dim: int, mlp_ratio: int, band_kernel_size: int, branch_ratio: float,
                 drop_path: float = 0.0, ls_init_value: float = 1e-6):
        super().__init__()
        self.token_mixer = InceptionDWConv2d(dim, band_kernel_size, branch_ratio)
        self.norm = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, mlp_ratio * dim)
        self.gamma = nn.Parameter(ls_init_value * torch.ones(dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.token_mixer(x)))
        if self.gamma is not None:
            y = y * self.gamma[:, None, None]
        return x + self.drop_path(y)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BN into mlp.fc1 (BN then 1x1 conv) and gamma into mlp.fc2."""
        if isinstance(self.norm, nn.Identity):
            return
        bn, fc1, fc2 = self.norm, self.mlp.fc1, self.mlp.fc2
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        fc1.bias.add_(fc1.weight.flatten(1) @ shift)
        fc1.weight.mul_(scale[None, :, None, None])
        fc2.weight.mul_(self.gamma[:, None, None, None])
        fc2.bias.mul_(self.gamma)
        self.norm = nn.Identity()
        self.gamma = None


class Downsample(nn.Sequential):
    """BN then conv 2x2 stride 2 (keys `downsample.0`, `downsample.1`)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(nn.BatchNorm2d(in_dim), nn.Conv2d(in_dim, out_dim, 2, stride=2))

    @torch.no_grad()
    def reparameterize(self) -> nn.Conv2d:
        """BN before an unpadded conv folds exactly into the conv's input side."""
        bn, conv = self[0], self[1]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, 2, stride=2).to(conv.weight)
        fused.weight.copy_(conv.weight * scale[None, :, None, None])
        fused.bias.copy_(conv.bias + (conv.weight * shift[None, :, None, None]).sum((1, 2, 3)))
        return fused


class Stem(nn.Sequential):
    """Conv 4x4 stride 4 then BN (keys `stem.0`, `stem.1`)."""

    def __init__(self, dim: int):
        super().__init__(nn.Conv2d(3, dim, 4, stride=4), nn.BatchNorm2d(dim))

    def reparameterize(self) -> nn.Conv2d:
        return fuse_conv_bn(self[0], self[1])


class MetaNeXtStage(nn.Module):
    """Optional downsample (stages 1-3), then MetaNeXt blocks."""

    def __init__(self, in_dim: int | None, dim: int, depth: int, mlp_ratio: int, band_kernel_size: int,
                 branch_ratio: float, drop_paths):
        super().__init__()
        self.downsample = nn.Identity() if in_dim is None else Downsample(in_dim, dim)
        self.blocks = nn.Sequential(*[
            MetaNeXtBlock(dim, mlp_ratio, band_kernel_size, branch_ratio, drop_paths[j])
            for j in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class MlpHead(nn.Module):
    """Global average pool -> fc1 (3C) -> GELU -> LayerNorm -> fc2 (activation before the norm)."""

    def __init__(self, dim: int, num_classes: int, mlp_ratio: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(mlp_ratio * dim, eps=1e-6)
        self.fc2 = nn.Linear(mlp_ratio * dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.act(self.fc1(x.mean((2, 3))))))


class InceptionNeXt(StageBackbone):
    """MetaNeXt network with Inception depthwise mixers.

    `num_classes=0` (dense form): `forward(x)` returns the raw outputs of stages `out_indices`
    (strides 4, 8, 16, 32), keys = the classifier's minus `head.*` (an ImageNet checkpoint loads,
    its head ignored). `num_classes>0`: also `head`, with `forward_head` / `classify` giving logits.
    """

    def __init__(self, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), band_kernel_size: int = 11,
                 branch_ratio: float = 0.125, mlp_ratios=(4, 4, 4, 3), drop_path_rate: float = 0.0,
                 out_indices=(0, 1, 2, 3), num_classes: int = 0):
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.stem = Stem(dims[0])
        dpr = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.Sequential(*[
            MetaNeXtStage(dims[i - 1] if i else None, dims[i], depths[i], mlp_ratios[i], band_kernel_size,
                          branch_ratio, dpr[i])
            for i in range(len(depths))])
        self.feature_spec = FeatureSpec(tuple(dims), (4, 8, 16, 32)).select(self.out_indices)
        self.num_classes = num_classes
        if num_classes > 0:
            self.head = MlpHead(dims[-1], num_classes)
        else:
            self.ignored_keys = ("head.",)
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor, last: int = 3) -> list[torch.Tensor]:
        """Outputs of stages 0..last."""
        if min(x.shape[-2:]) < 32:
            raise CvkitError(f"InceptionNeXt needs input sides of at least 32 pixels, got "
                             f"{tuple(x.shape[-2:])}")
        x = self.stem(x)
        outs = []
        for stage in self.stages[:last + 1]:
            x = stage(x)
            outs.append(x)
        return outs

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output."""
        return self.head(x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[-1])


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


@register_converter("inceptionnext")
def convert_inceptionnext(sd):
    """Official (and timm's `inception_next`) keys are cvkit's; an OpenMMLab `backbone.` prefix
    is dropped."""
    return strip_prefix(sd, "backbone.")


VARIANTS = {
    "atto": {"depths": (2, 2, 6, 2), "dims": (40, 80, 160, 320),
             "band_kernel_size": 9, "branch_ratio": 0.25},
    "t": {"depths": (3, 3, 9, 3), "dims": (96, 192, 384, 768)},
    "s": {"depths": (3, 3, 27, 3), "dims": (96, 192, 384, 768)},
    "b": {"depths": (3, 3, 27, 3), "dims": (128, 256, 512, 1024)},
}
ALIASES = {"atto": (), "t": ("inceptionnext_tiny",), "s": ("inceptionnext_small",),
           "b": ("inceptionnext_base",)}


def _register(variant: str) -> None:
    def build(**kwargs) -> InceptionNeXt:
        return InceptionNeXt(**{**VARIANTS[variant], **kwargs})

    build.__name__ = f"inceptionnext_{variant}"
    register_backbone(f"inceptionnext_{variant}", aliases=ALIASES[variant], family="inceptionnext",
                      converter="inceptionnext", paper=PAPER)(build)


for _v in VARIANTS:
    _register(_v)
