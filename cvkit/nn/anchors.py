"""Anchor (prior box) generators of mmdet: RetinaNet's octave-scale anchors and SSD's priors.

Each level has a few base anchors around one centre; `grid_priors` shifts them to every location
(x * stride, y * stride), location-major (row-major over y, x) with the base anchors inner, which
is the order in which heads lay out their channels (channel = anchor * K + k). A base anchor of
size s, scale c and ratio r has h = s*c*sqrt(r) and w = s*c/sqrt(r).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import UsageError


def base_anchors(base_size: float, scales, ratios, center=(0.0, 0.0), scale_major: bool = True) -> Tensor:
    """(len(scales) * len(ratios), 4) anchors centred at `center`: ratio outer and scale inner when
    `scale_major`, else scale outer and ratio inner (float32, computed in mmdet's order)."""
    scales = torch.as_tensor(scales, dtype=torch.float32)
    ratios = torch.as_tensor(ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    if scale_major:
        ws = (base_size * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (base_size * h_ratios[:, None] * scales[None, :]).reshape(-1)
    else:
        ws = (base_size * scales[:, None] * w_ratios[None, :]).reshape(-1)
        hs = (base_size * scales[:, None] * h_ratios[None, :]).reshape(-1)
    cx, cy = center
    return torch.stack([cx - 0.5 * ws, cy - 0.5 * hs, cx + 0.5 * ws, cy + 0.5 * hs], -1)


class AnchorGenerator:
    """Per-level base anchors and strides; `grid_priors` lays them over feature maps."""

    def __init__(self, strides, base: list[Tensor]):
        if len(strides) != len(base):
            raise UsageError(f"{len(strides)} anchor strides for {len(base)} levels of base anchors")
        self.strides = tuple(strides)
        self.base_anchors = list(base)

    @property
    def num_base_anchors(self) -> list[int]:
        return [len(b) for b in self.base_anchors]

    def grid_priors(self, featmap_sizes, dtype=torch.float32, device="cpu") -> list[Tensor]:
        """One (H*W*A, 4) tensor of x1y1x2y2 anchors per level for feature maps of `featmap_sizes`."""
        if len(featmap_sizes) != len(self.strides):
            raise UsageError(f"anchors are set up for {len(self.strides)} levels, got {len(featmap_sizes)}")
        out = []
        for (h, w), stride, base in zip(featmap_sizes, self.strides, self.base_anchors):
            sx, sy = (stride, stride) if isinstance(stride, (int, float)) else stride
            shift_x = torch.arange(w, device=device).to(dtype) * sx
            shift_y = torch.arange(h, device=device).to(dtype) * sy
            yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = torch.stack([xx, yy, xx, yy], -1).reshape(-1, 1, 4)
            out.append((base.to(device, dtype)[None] + shifts).reshape(-1, 4))
        return out


def retinanet_anchors(strides=(8, 16, 32, 64, 128), octave_base_scale: float = 4, scales_per_octave: int = 3,
                      ratios=(0.5, 1.0, 2.0)) -> AnchorGenerator:
    """RetinaNet: base size = stride, scales octave_base_scale * 2^(k/scales_per_octave), each ratio
    (9 anchors per location by default), centred on the grid point (centre offset 0)."""
    scales = [octave_base_scale * 2 ** (k / scales_per_octave) for k in range(scales_per_octave)]
    return AnchorGenerator(strides, [base_anchors(s, scales, ratios) for s in strides])


def ssd_sizes(input_size: int, basesize_ratio_range, num_levels: int) -> tuple[list[int], list[int]]:
    """SSD's min/max prior sizes from `basesize_ratio_range` (mmdet's integer arithmetic): the
    percentages min..max in equal integer steps over levels 2.., plus a hand-set first level."""
    lo, hi = int(basesize_ratio_range[0] * 100), int(basesize_ratio_range[1] * 100)
    step = int(math.floor(hi - lo) / (num_levels - 2))
    min_sizes = [int(input_size * r / 100) for r in range(lo, hi + 1, step)]
    max_sizes = [int(input_size * (r + step) / 100) for r in range(lo, hi + 1, step)]
    first = {(300, 15): (7, 15), (300, 20): (10, 20), (512, 10): (4, 10), (512, 15): (7, 15)}.get((input_size, lo))
    if first is None:
        raise UsageError(f"SSD has no first-level prior size for input {input_size} and basesize ratio "
                         f"{basesize_ratio_range[0]}; give min_sizes and max_sizes explicitly")
    min_sizes.insert(0, int(input_size * first[0] / 100))
    max_sizes.insert(0, int(input_size * first[1] / 100))
    return min_sizes, max_sizes


def ssd_anchors(strides=(8, 16, 32, 64, 100, 300), ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
                input_size: int = 300, basesize_ratio_range=(0.15, 0.9), min_sizes=None,
                max_sizes=None) -> AnchorGenerator:
    """SSD priors: per location the min-size square, the sqrt(min*max) square, then ratios 1/r, r for
    each r of the level (4 or 6 priors); centred at stride/2; pixel units, not clipped. Sizes come
    from `basesize_ratio_range` unless `min_sizes`/`max_sizes` are given (SSDLite)."""
    if min_sizes is None or max_sizes is None:
        min_sizes, max_sizes = ssd_sizes(input_size, basesize_ratio_range, len(strides))
    base = []
    for stride, lvl_ratios, lo, hi in zip(strides, ratios, min_sizes, max_sizes):
        level_ratios = [1.0] + [x for r in lvl_ratios for x in (1 / r, float(r))]
        anchors = base_anchors(lo, [1.0, math.sqrt(hi / lo)], level_ratios, (stride / 2, stride / 2),
                               scale_major=False)
        n = len(level_ratios)  # keep scale 1 x every ratio, plus scale 2 x ratio 1 second
        base.append(anchors[[0, n] + list(range(1, n))])
    return AnchorGenerator(strides, base)
