"""The super-resolution models by name, and running any of them on RGB.

Every model takes NCHW float input in [0, 1] at low resolution and returns the image `scale` times
larger, unclamped. `model.in_channels` says what it reads: "rgb" (3 channels) or "y" (the BT.601
luma of `rgb_to_ycbcr`, 1 channel); `upscale_rgb` hides the difference. Registry metadata:
`scales` (the supported factors; None = any factor above 1), `converter` (checkpoint layout
converter in cvkit.weights, for models with official weights) and `paper`.
"""
from __future__ import annotations

import torch
from torch import nn

from cvkit.errors import UsageError
from cvkit.registry import Registry

from .cfsr import CFSR
from .cfsr import SCALES as CFSR_SCALES
from .espcn import ESPCN
from .espcn import SCALES as ESPCN_SCALES
from .imresize import imresize
from .metrics import rgb_to_ycbcr, ycbcr_to_rgb
from .scnet import STEPS as SCNET_STEPS
from .scnet import SCNet

SR_MODELS = Registry("upscale model")


class Bicubic(nn.Module):
    """The bicubic baseline: MATLAB `imresize` by `scale` (any factor > 1; output ceil(in * scale))."""

    def __init__(self, scale: float = 4, mode: str = "rgb"):
        super().__init__()
        if not scale > 1:
            raise UsageError(f"bicubic upscaling needs a scale above 1; got {scale}")
        if mode not in ("rgb", "y"):
            raise UsageError(f"bicubic mode must be 'rgb' or 'y'; got '{mode}'")
        self.scale, self.in_channels = scale, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return imresize(x, self.scale)


@SR_MODELS.register("espcn", scales=ESPCN_SCALES, paper="Shi et al., CVPR 2016 (arXiv 1609.05158)")
def espcn(scale: int = 3, mode: str = "y") -> ESPCN:
    """ESPCN (5-3-3, tanh, pixel shuffle) on luma ("y", the paper's) or RGB."""
    return ESPCN(scale, mode)


@SR_MODELS.register("cfsr", converter="cfsr", scales=CFSR_SCALES,
                    paper="Wu et al., IEEE TIP 2024 (arXiv 2401.05633)")
def cfsr(scale: int = 4) -> CFSR:
    """CFSR, released configuration, training form (use cvkit.nn.deploy for inference)."""
    return CFSR(scale)


@SR_MODELS.register("scnet_t", converter="scnet", scales=tuple(SCNET_STEPS),
                    paper="Wu et al., MIR 2024 (arXiv 2307.16140)")
def scnet_t(scale: int = 4, upsampler: str = "mlp") -> SCNet:
    """SCNet-T (64 features, 16 blocks); upsampler "mlp" (default) or "pixelshuffle"."""
    return SCNet(scale, 64, 16, upsampler)


@SR_MODELS.register("bicubic", scales=None, paper="MATLAB imresize bicubic (Keys 1981), BasicSR port")
def bicubic(scale: float = 4, mode: str = "rgb") -> Bicubic:
    """Bicubic upscaling with MATLAB's imresize; no weights."""
    return Bicubic(scale, mode)


def upscale_rgb(model: nn.Module, rgb: torch.Tensor) -> torch.Tensor:
    """Run `model` on an Nx3xHxW RGB batch in [0, 1]; returns RGB, unclamped. A "y" model gets
    the luma of BT.601 YCbCr, and the chroma is upscaled with MATLAB bicubic (as in ESPCN)."""
    if model.in_channels == "rgb":
        return model(rgb)
    ycbcr = rgb_to_ycbcr(rgb)
    y = model(ycbcr[:, :1])
    cbcr = imresize(ycbcr[:, 1:], model.scale)
    return ycbcr_to_rgb(torch.cat([y, cbcr], 1))
