"""SCNet: Wu, Jiang, Jiang & Liu, "Fully 1x1 Convolutional Network for Lightweight Image
Super-Resolution", Machine Intelligence Research 2024 (arXiv 2307.16140); code Aitical/SCNet.

What is new: every convolution is 1x1; the spatial context comes from Shift8, a parameter-free
operator that moves each eighth of the channels by one pixel in one of eight directions. The
network is a plain stack of shift residual blocks with a shift-MLP (bilinear) or pixel-shuffle
upsampler and a bilinear skip from the input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cvkit.errors import UsageError
from cvkit.weights import register_converter

# Upsampling steps per scale (x4 is two x2 steps).
STEPS = {2: (2,), 3: (3,), 4: (2, 2)}
# (dy, dx) read by channel group k: out[i, j] = x[i + dy, j + dx], zero outside.
SHIFTS = ((-1, 0), (1, 0), (0, -1), (0, 1), (1, 1), (1, -1), (-1, 1), (-1, -1))


class Shift8(nn.Module):
    """Shift the 8 channel groups by one pixel each in the 8 directions of SHIFTS (zero fill)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]
        g = c // 8
        xp = F.pad(x, (1, 1, 1, 1))
        return torch.cat([xp[:, k * g:(k + 1) * g, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                          for k, (dy, dx) in enumerate(SHIFTS)], 1)


class ResidualBlockShift(nn.Module):
    """x + conv2(ReLU(Shift8(conv1(x)))), all convs 1x1."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.shift = Shift8()
        self.conv2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.shift(self.conv1(x))))


class UpShiftMLP(nn.Module):
    """Bilinear upsampling (align_corners=False) -> 1x1 -> LeakyReLU(0.02) -> Shift8 -> 1x1."""

    def __init__(self, dim: int, scale: int):
        super().__init__()
        self.up_layer = nn.Sequential(nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False),
                                      nn.Conv2d(dim, dim, 1), nn.LeakyReLU(0.02), Shift8(),
                                      nn.Conv2d(dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up_layer(x)


class UpShiftPixelShuffle(nn.Module):
    """1x1 -> LeakyReLU(0.02) -> Shift8 -> 1x1 to dim * s^2 -> PixelShuffle(s)."""

    def __init__(self, dim: int, scale: int):
        super().__init__()
        self.up_layer = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.LeakyReLU(0.02), Shift8(),
                                      nn.Conv2d(dim, dim * scale * scale, 1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up_layer(x)


class SCNet(nn.Module):
    """SCNet; RGB in [0, 1] -> RGB at `scale` x the size, not clamped. `upsampler` is "mlp"
    (the paper's default) or "pixelshuffle" (the -PS release). SCNet-T: 64 features, 16 blocks."""

    in_channels = "rgb"

    def __init__(self, scale: int = 4, num_feat: int = 64, num_block: int = 16, upsampler: str = "mlp"):
        super().__init__()
        if scale not in STEPS:
            raise UsageError(f"SCNet supports scales {', '.join(map(str, STEPS))}; got {scale}")
        ups = {"mlp": UpShiftMLP, "pixelshuffle": UpShiftPixelShuffle}
        if upsampler not in ups:
            raise UsageError(f"SCNet upsampler must be 'mlp' or 'pixelshuffle'; got '{upsampler}'")
        self.scale = scale
        self.conv_first = nn.Conv2d(3, num_feat, 1)
        self.body = nn.Sequential(*(ResidualBlockShift(num_feat) for _ in range(num_block)))
        self.ups = nn.ModuleList(ups[upsampler](num_feat, s) for s in STEPS[scale])
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 1)
        self.conv_last = nn.Conv2d(num_feat, 3, 1)
        self.lrelu = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(self.lrelu(self.conv_first(x)))
        for up in self.ups:
            out = self.lrelu(up(out))
        out = self.conv_last(self.lrelu(self.conv_hr(out)))
        return out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


@register_converter("scnet")
def convert_scnet(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official SCNet state_dict -> cvkit: `upconv{i}.` becomes `ups.{i-1}.`."""
    out = {}
    for key, value in sd.items():
        if key.startswith("upconv"):
            step, rest = key[len("upconv"):].split(".", 1)
            key = f"ups.{int(step) - 1}.{rest}"
        out[key] = value
    return out
