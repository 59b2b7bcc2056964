"""ESPCN: Shi et al., "Real-Time Single Image and Video Super-Resolution Using an Efficient
Sub-Pixel Convolutional Neural Network", CVPR 2016 (arXiv 1609.05158).

What is new: all convolutions run at low resolution and the last layer's r^2 C channels are
rearranged into the r-times larger image (the sub-pixel convolution, `nn.PixelShuffle(r)`),
instead of upscaling first and convolving at high resolution.

The paper's configuration: 5x5 conv to 64, tanh, 3x3 to 32, tanh, 3x3 to r^2 C, pixel shuffle;
"same" padding, no activation on the last layer. The paper super-resolves the luma only (C = 1,
Y of BT.601 YCbCr, chroma upscaled bicubically); an RGB variant (C = 3) is provided as well. There
is no official code or checkpoint; weights are cvkit's own.
"""
from __future__ import annotations

import torch
from torch import nn

from cvkit.errors import UsageError

SCALES = (2, 3, 4)
MODES = {"y": 1, "rgb": 3}


class ESPCN(nn.Module):
    """ESPCN on `mode` "y" (Nx1xHxW luma in [0, 1]) or "rgb" (Nx3xHxW); output r times larger."""

    def __init__(self, scale: int = 3, mode: str = "y"):
        super().__init__()
        if scale not in SCALES:
            raise UsageError(f"ESPCN supports scales {', '.join(map(str, SCALES))}; got {scale}")
        if mode not in MODES:
            raise UsageError(f"ESPCN mode must be 'y' or 'rgb'; got '{mode}'")
        self.scale, self.in_channels = scale, mode
        c = MODES[mode]
        self.conv1 = nn.Conv2d(c, 64, 5, padding=2)
        self.conv2 = nn.Conv2d(64, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, c * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.conv1(x))
        x = torch.tanh(self.conv2(x))
        return self.shuffle(self.conv3(x))
