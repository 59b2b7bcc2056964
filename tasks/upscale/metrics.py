"""PSNR and SSIM exactly as BasicSR computes them, and the BT.601 colour conversions of SR.

SR papers report PSNR/SSIM on the luma Y of ITU-R BT.601 "studio swing" YCbCr (MATLAB's
`rgb2ycbcr`), after cropping `scale` pixels from every border. The functions follow BasicSR
(`metrics/psnr_ssim.py`, `utils/color_util.py`), which the `metrics/psnr_ssim` and
`metrics/set5_bicubic` fixtures pin:

- Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 for R, G, B in [0, 255], NOT rounded;
- PSNR = 10 log10(255^2 / MSE) with a float64 MSE (inf for identical images);
- SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, C1 = (0.01 * 255)^2,
  C2 = (0.03 * 255)^2, float64, only the "valid" region where the window fits; for several
  channels the mean of the per-channel SSIMs.

Images are HxWx3 RGB (cvkit's frame order; BasicSR's numpy functions take BGR) or HxW, with
values in [0, 255], uint8 or float.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from cvkit.errors import UsageError

# BT.601 studio swing for RGB in [0, 1]: Y, Cb, Cr rows in [0, 255] units.
_YCBCR = np.array([[65.481, 128.553, 24.966],
                   [-37.797, -74.203, 112.0],
                   [112.0, -93.786, -18.214]])
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0])


def rgb_to_y(img: np.ndarray, round_uint8: bool = False) -> np.ndarray:
    """BT.601 luma of an HxWx3 RGB image in [0, 255] as an HxW float64 array in [16, 235].

    Computed as BasicSR's `to_y_channel` does (BGR / 255 in float32, the dot product in float64,
    the result stored as float32 Y / 255). `round_uint8=True` returns uint8 Y instead, rounded
    as MATLAB's `rgb2ycbcr` does on uint8 images (the SRCNN-era evaluation behind the published
    bicubic numbers)."""
    bgr = np.asarray(img).astype(np.float32)[..., ::-1] / 255.0
    y = np.dot(bgr, _YCBCR[0][::-1].tolist()) + _YCBCR_OFFSET[0]
    if round_uint8:
        return y.round().astype(np.uint8)
    return ((y / 255.0).astype(np.float32) * 255.0).astype(np.float64)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """BT.601 studio-swing YCbCr of an Nx3xHxW RGB tensor in [0, 1], also scaled to [0, 1]
    (Y in [16, 235] / 255): the input range of Y-channel SR networks such as ESPCN."""
    m = torch.as_tensor(_YCBCR / 255.0, dtype=rgb.dtype, device=rgb.device)
    off = torch.as_tensor(_YCBCR_OFFSET / 255.0, dtype=rgb.dtype, device=rgb.device)
    return torch.einsum("oc,nchw->nohw", m, rgb) + off[None, :, None, None]


def ycbcr_to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_ycbcr` (no clamping)."""
    m = torch.as_tensor(np.linalg.inv(_YCBCR / 255.0), dtype=ycbcr.dtype, device=ycbcr.device)
    off = torch.as_tensor(_YCBCR_OFFSET / 255.0, dtype=ycbcr.dtype, device=ycbcr.device)
    return torch.einsum("oc,nchw->nohw", m, ycbcr - off[None, :, None, None])


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom and right of an HR image so both sides divide by `scale`."""
    h, w = img.shape[:2]
    return img[:h - h % scale, :w - w % scale]


def _prepare(img, ref, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    img, ref = np.asarray(img), np.asarray(ref)
    if img.shape != ref.shape:
        raise UsageError(f"image shapes differ: {img.shape} vs {ref.shape}")
    img, ref = img.astype(np.float64), ref.astype(np.float64)
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
        ref = ref[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel and img.ndim == 3 and img.shape[2] == 3:
        img, ref = rgb_to_y(img), rgb_to_y(ref)
    return img, ref


def psnr(img: np.ndarray, ref: np.ndarray, crop_border: int = 0, y_channel: bool = True) -> float:
    """PSNR in dB of `img` against `ref` (HxWx3 RGB or HxW, [0, 255]); BasicSR's
    `calculate_psnr`. `y_channel` compares BT.601 luma (the SR convention), else all channels."""
    img, ref = _prepare(img, ref, crop_border, y_channel)
    mse = np.mean((img - ref) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0 * 255.0 / mse))


def _ssim_channel(img: np.ndarray, ref: np.ndarray) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = cv2.getGaussianKernel(11, 1.5)  # float64, sums to 1

    def blur(t: np.ndarray) -> np.ndarray:  # separable 11x11 window, valid region only
        return cv2.sepFilter2D(t, -1, g, g)[5:-5, 5:-5]

    mu1, mu2 = blur(img), blur(ref)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = blur(img * img) - mu1_sq
    s2 = blur(ref * ref) - mu2_sq
    s12 = blur(img * ref) - mu12
    ssim_map = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return float(ssim_map.mean())


def ssim(img: np.ndarray, ref: np.ndarray, crop_border: int = 0, y_channel: bool = True) -> float:
    """SSIM of `img` against `ref` (HxWx3 RGB or HxW, [0, 255]); BasicSR's `calculate_ssim`.
    Both sides must be at least 11 pixels after cropping."""
    img, ref = _prepare(img, ref, crop_border, y_channel)
    if min(img.shape[:2]) < 11:
        raise UsageError(f"SSIM needs images of at least 11x11 after cropping, got {img.shape[:2]}")
    if img.ndim == 2:
        return _ssim_channel(img, ref)
    return float(np.mean([_ssim_channel(img[..., c], ref[..., c]) for c in range(img.shape[2])]))
