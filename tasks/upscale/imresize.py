"""MATLAB-compatible bicubic `imresize`, the resize behind every published SR benchmark.

SR papers make their low-resolution inputs (and the bicubic baseline) with MATLAB's
`imresize(img, s, 'bicubic')`; BasicSR's `matlab_functions.imresize` is the PyTorch port that the
`metrics/imresize` fixture pins. Facts copied from it:

- output size ceil(in * scale) per axis; output pixel x (1-based) samples the input at
  u = x / scale + 0.5 * (1 - 1 / scale);
- Keys' cubic kernel with a = -0.5; when shrinking (scale < 1) with antialiasing the kernel is
  stretched to scale * cubic(scale * d) over a width of 4 / scale;
- taps ceil(width) + 2 per output, weights normalised to sum 1, symmetric borders (mirrored with
  the edge pixel repeated); height is resized before width; no clamping or rounding.

Each axis becomes an (out, in) weight matrix, so a resize is two matrix products. The matrices are
built once per (in, out, scale) in float64 and cached per dtype and device, which makes repeated
resizes of same-sized video frames cheap. Only a band of each matrix is non-zero (an output reads
a few neighbouring inputs), so the product is taken block by block over BLOCK output rows and
the inputs they read: x3 from 640 to 1920 columns takes 85 rather than 640 multiply-adds
per output.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from cvkit.errors import UsageError

BLOCK = 256  # output rows per matmul of a banded resize


def cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's `cubic`)."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1).to(x.dtype)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)).to(x.dtype)
    return near + far


@lru_cache(maxsize=256)
def _matrix64(in_len: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    """The (out_len, in_len) float64 weights of one axis, borders folded in."""
    stretch = scale < 1 and antialias
    width = 4.0 / scale if stretch else 4.0
    u = torch.arange(1, out_len + 1, dtype=torch.float64) / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None]
    dist = u[:, None] - idx
    w = scale * cubic(dist * scale) if stretch else cubic(dist)
    w = w / w.sum(1, keepdim=True)
    # Symmetric extension as MATLAB does it: 0-based position i reads mirror(i) of the input.
    i = idx.long() - 1
    period = 2 * in_len
    i = torch.remainder(i, period)
    i = torch.where(i >= in_len, period - 1 - i, i)
    mat = torch.zeros(out_len, in_len, dtype=torch.float64)
    mat.scatter_add_(1, i, w)
    return mat


@lru_cache(maxsize=256)
def resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool = True,
                  dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
    """Cached (out_len, in_len) matrix M with `M @ v` = the MATLAB bicubic resize of vector v
    (shared between callers: do not modify it in place)."""
    return _matrix64(in_len, out_len, float(scale), antialias).to(device=device, dtype=dtype)


@lru_cache(maxsize=256)
def _bands(in_len: int, out_len: int, scale: float, antialias: bool) -> tuple[tuple[int, int, int, int], ...]:
    """(out_lo, out_hi, in_lo, in_hi) per BLOCK output rows: the input columns their weights cover."""
    nonzero = _matrix64(in_len, out_len, float(scale), antialias) != 0
    bands = []
    for lo in range(0, out_len, BLOCK):
        cols = nonzero[lo:lo + BLOCK].any(0).nonzero()
        bands.append((lo, min(lo + BLOCK, out_len), int(cols[0]), int(cols[-1]) + 1))
    return tuple(bands)


def _resize_axis(x: torch.Tensor, mat: torch.Tensor, bands, axis: int) -> torch.Tensor:
    """`mat` applied along `axis` (-2: mat @ x, -1: x @ mat.T), one matmul per band."""
    parts = [mat[a:b, i:j] @ x[..., i:j, :] if axis == -2 else x[..., i:j] @ mat[a:b, i:j].T
             for a, b, i, j in bands]
    return parts[0] if len(parts) == 1 else torch.cat(parts, axis)


def _plan(in_len: int, scale: float | None, size: int | None) -> tuple[int, float]:
    if size is not None:
        if size < 1:
            raise UsageError(f"imresize: output size must be positive, got {size}")
        return size, size / in_len
    if scale is None or not scale > 0:
        raise UsageError(f"imresize: scale must be positive, got {scale}")
    return math.ceil(in_len * scale), float(scale)


def _pair(v):
    return (None, None) if v is None else tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def imresize(x: torch.Tensor, scale: float | tuple[float, float] | None = None, *,
             size: tuple[int, int] | None = None, antialias: bool = True) -> torch.Tensor:
    """Resize the last two axes (H, W) of `x` like MATLAB `imresize(x, scale, 'bicubic')`.

    `x` is any float tensor `(..., H, W)` (e.g. NCHW); integer tensors are computed in float32.
    Give either `scale` (one factor or (scale_h, scale_w); output ceil(in * scale)) or
    `size=(out_h, out_w)` (then scale = out / in per axis, as MATLAB does). The result has x's
    dtype and device and is neither clamped nor rounded.
    """
    if (size is None) == (scale is None):
        raise UsageError("imresize needs either a scale or an output size")
    if not x.is_floating_point():
        x = x.float()
    (sh, sw), (oh, ow) = _pair(scale), _pair(size)
    h, w = x.shape[-2:]
    out_h, sh = _plan(h, sh, oh)
    out_w, sw = _plan(w, sw, ow)
    mh = resize_matrix(h, out_h, sh, antialias, x.dtype, x.device)
    mw = resize_matrix(w, out_w, sw, antialias, x.dtype, x.device)
    x = _resize_axis(x, mh, _bands(h, out_h, sh, antialias), -2)
    return _resize_axis(x, mw, _bands(w, out_w, sw, antialias), -1)


def imresize_np(img: np.ndarray, scale: float | tuple[float, float] | None = None, *,
                size: tuple[int, int] | None = None, antialias: bool = True) -> np.ndarray:
    """`imresize` for an HxW or HxWxC numpy image. float32 input is computed in float32, anything
    else (uint8 included, values kept in their range) in float64; the result is not rounded."""
    dtype = torch.float32 if img.dtype == np.float32 else torch.float64
    t = torch.from_numpy(np.ascontiguousarray(img)).to(dtype)
    if t.ndim == 3:
        return imresize(t.permute(2, 0, 1).contiguous(), scale, size=size, antialias=antialias).permute(1, 2, 0).numpy()
    return imresize(t, scale, size=size, antialias=antialias).numpy()
