"""FasterNet: "Run, Don't Walk: Chasing Higher FLOPS for Faster Neural Networks", Chen et al.,
CVPR 2023 (arXiv 2303.03667); official code JierunChen/FasterNet.

What is new: the partial convolution (PConv), a dense 3x3 conv on only the first quarter of the
channels with the rest passed through, followed by a pointwise MLP; fewer FLOPs *and* fewer memory
accesses, so the FLOPS actually achieved stay high. The net is plain Conv/BN/act, and its deploy
form folds every BN that follows a conv.

Input sides are floored at each stride as in the official code; a side shorter than 32 pixels
raises CvkitError.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import CvkitError
from ..nn import DropPath, FeatureSpec, drop_path_rates, fuse_conv_bn
from ..weights import register_converter, strip_prefix
from . import register_backbone

PAPER = "Run, Don't Walk: Chasing Higher FLOPS for Faster Neural Networks (Chen et al., CVPR 2023)"


class PartialConv3(nn.Module):
    """PConv: a dense 3x3 conv (no bias) on the first dim/n_div channels, the rest untouched."""

    def __init__(self, dim: int, n_div: int):
        super().__init__()
        self.dim_conv3 = dim // n_div
        self.partial_conv3 = nn.Conv2d(self.dim_conv3, self.dim_conv3, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = torch.split(x, [self.dim_conv3, x.shape[1] - self.dim_conv3], dim=1)
        return torch.cat((self.partial_conv3(x1), x2), 1)


class MLPBlock(nn.Module):
    """x + MLP(PConv(x)); MLP = 1x1 conv to 2C, BN, act, 1x1 conv back (no biases)."""

    def __init__(self, dim: int, n_div: int, mlp_ratio: float, act: type[nn.Module], drop_path: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.spatial_mixing = PartialConv3(dim, n_div)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act(),
                                 nn.Conv2d(hidden, dim, 1, bias=False))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.spatial_mixing(x)))

    def reparameterize(self) -> None:
        self.mlp[0] = fuse_conv_bn(self.mlp[0], self.mlp[1])
        self.mlp[1] = nn.Identity()


class BasicStage(nn.Module):
    def __init__(self, dim: int, depth: int, n_div: int, mlp_ratio: float, act: type[nn.Module],
                 drop_paths: list[float]):
        super().__init__()
        self.blocks = nn.Sequential(*[MLPBlock(dim, n_div, mlp_ratio, act, drop_paths[j])
                                      for j in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class PatchEmbed(nn.Module):
    """Stem: conv 4x4 stride 4 (no bias) + BN."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 4, 4, bias=False)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))

    def reparameterize(self) -> None:
        self.proj = fuse_conv_bn(self.proj, self.norm)
        self.norm = nn.Identity()


class PatchMerging(nn.Module):
    """Between stages: conv 2x2 stride 2 to twice the channels (no bias) + BN."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.reduction = nn.Conv2d(cin, cout, 2, 2, bias=False)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x))

    def reparameterize(self) -> None:
        self.reduction = fuse_conv_bn(self.reduction, self.norm)
        self.norm = nn.Identity()


class FasterNet(nn.Module):
    """FasterNet. `stages` is the official flat Sequential [S0, Merge, S1, Merge, S2, Merge, S3].

    num_classes=0: dense form (the official `fork_feat` model), outputs = BN `norm{0,2,4,6}` of
    the chosen stages. num_classes>0: classifier, `forward` gives the raw stage outputs and
    `classify` the logits (GAP -> 1x1 conv to `feature_dim` (no bias) -> act -> Linear).
    """

    def __init__(self, embed_dim: int = 40, depths=(1, 2, 8, 2), act: type[nn.Module] = nn.GELU,
                 mlp_ratio: float = 2.0, n_div: int = 4, feature_dim: int = 1280,
                 out_indices=(0, 1, 2, 3), num_classes: int = 0, drop_path_rate: float = 0.0):
        super().__init__()
        dims = [embed_dim * 2 ** i for i in range(4)]
        self.out_indices = tuple(out_indices)
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed(3, dims[0])
        dpr = drop_path_rates(drop_path_rate, depths)
        layers = []
        for i in range(4):
            if i:
                layers.append(PatchMerging(dims[i - 1], dims[i]))
            layers.append(BasicStage(dims[i], depths[i], n_div, mlp_ratio, act, dpr[i]))
        self.stages = nn.Sequential(*layers)
        self.feature_spec = FeatureSpec(tuple(dims), (4, 8, 16, 32)).select(self.out_indices)
        if num_classes:
            self.avgpool_pre_head = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                                  nn.Conv2d(dims[3], feature_dim, 1, bias=False), act())
            self.head = nn.Linear(feature_dim, num_classes)
        else:
            for i in self.out_indices:
                self.add_module(f"norm{2 * i}", nn.BatchNorm2d(dims[i]))
            self.optional_keys = tuple(f"norm{2 * i}." for i in self.out_indices)
            self.ignored_keys = ("avgpool_pre_head.", "head.", "norm0.", "norm2.", "norm4.", "norm6.")

    def forward_features(self, x: torch.Tensor, last: int = 3) -> list[torch.Tensor]:
        """Outputs of BasicStages 0..last (before any per-output norm)."""
        if min(x.shape[-2:]) < 32:
            raise CvkitError(f"FasterNet needs input sides of at least 32 pixels, got {tuple(x.shape[-2:])}")
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.stages[:2 * last + 1]):
            x = layer(x)
            if i % 2 == 0:
                outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.forward_features(x, max(self.out_indices))
        if self.num_classes:
            return [feats[i] for i in self.out_indices]
        return [getattr(self, f"norm{2 * i}")(feats[i]) for i in self.out_indices]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage output."""
        return self.head(torch.flatten(self.avgpool_pre_head(x), 1))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[-1])


VARIANTS = {
    "t0": {"embed_dim": 40, "depths": (1, 2, 8, 2), "act": nn.GELU},
    "t1": {"embed_dim": 64, "depths": (1, 2, 8, 2), "act": nn.GELU},
    "t2": {"embed_dim": 96, "depths": (1, 2, 8, 2), "act": nn.ReLU},
    "s": {"embed_dim": 128, "depths": (1, 2, 13, 2), "act": nn.ReLU},
    "m": {"embed_dim": 144, "depths": (3, 4, 18, 3), "act": nn.ReLU},
    "l": {"embed_dim": 192, "depths": (3, 4, 18, 3), "act": nn.ReLU},
}


@register_converter("fasternet")
def convert_fasternet(sd: dict) -> dict:
    """Official classifier `.pth` keys are cvkit's; OpenMMLab detectors add `backbone.`."""
    return strip_prefix(sd, "backbone.")


def _register(variant: str) -> None:
    def build(**kwargs) -> FasterNet:
        return FasterNet(**{**VARIANTS[variant], **kwargs})

    build.__name__ = f"fasternet_{variant}"
    build.__doc__ = f"FasterNet-{variant.upper()} ({PAPER})."
    register_backbone(f"fasternet_{variant}", family="fasternet", converter="fasternet", paper=PAPER)(build)


for _variant in VARIANTS:
    _register(_variant)
