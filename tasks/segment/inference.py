"""Whole-image and sliding-window inference for segmentation models (`model(x)["out"]` = logits at the
input size).

`slide_labels` follows mmsegmentation's `slide_inference`: windows of `crop` every `stride` pixels,
`max(H - crop + stride - 1, 0) // stride + 1` per side, the last ones shifted back inside the image
(a window never extends past it; an image smaller than the crop is one window of its own size), logits
of overlapping windows summed and divided by the number of windows that cover each pixel. Memory is
bounded: the sums live in one band of `crop` rows that moves down the image, rows are turned into labels
as soon as no later window covers them, so a 4K image costs about classes x crop x width floats (plus a
copy of the overlap when the band moves), not classes x height x width.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from cvkit.errors import UsageError


def whole_labels(model: nn.Module, x: Tensor) -> Tensor:
    """(N, H, W) int64 labels from one forward pass over the whole batch."""
    return model(x)["out"].argmax(1)


def _windows(size: int, crop: int, stride: int) -> list[tuple[int, int]]:
    n = max(size - crop + stride - 1, 0) // stride + 1
    out = []
    for i in range(n):
        end = min(i * stride + crop, size)
        out.append((max(end - crop, 0), end))
    return out


def check_slide(crop: tuple[int, int], stride: tuple[int, int]) -> None:
    if min(crop) < 1 or min(stride) < 1:
        raise UsageError(f"--crop and --stride must be positive (got crop {crop}, stride {stride})")
    if stride[0] > crop[0] or stride[1] > crop[1]:
        raise UsageError(f"--stride {stride} larger than --crop {crop} would leave pixels unlabelled")


def slide_labels(model: nn.Module, x: Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """(N, H, W) int64 labels by sliding-window inference (module docstring); `crop` and `stride` are
    (height, width)."""
    check_slide(crop, stride)
    n, _, h, w = x.shape
    rows, cols = _windows(h, crop[0], stride[0]), _windows(w, crop[1], stride[1])
    labels = torch.empty(n, h, w, dtype=torch.int64)
    band = min(crop[0], h)  # a row of windows spans at most this many image rows
    acc = count = None
    top = 0  # row i of acc and count is image row top + i; top is the first row of the current windows
    for r, (y1, y2) in enumerate(rows):
        for x1, x2 in cols:
            logits = model(x[:, :, y1:y2, x1:x2])["out"].float()
            if acc is None:
                acc = logits.new_zeros(n, logits.shape[1], band, w)
                count = logits.new_zeros(1, 1, band, w)
            acc[:, :, y1 - top:y2 - top, x1:x2] += logits
            count[:, :, y1 - top:y2 - top, x1:x2] += 1
        done = rows[r + 1][0] if r + 1 < len(rows) else h  # rows above the next windows are final
        k = done - top
        labels[:, top:done] = acc[:, :, :k].div_(count[:, :, :k]).argmax(1)
        for buf in (acc, count):  # shift the unfinished rows to the top of the band
            buf[:, :, :band - k] = buf[:, :, k:].clone()
            buf[:, :, band - k:] = 0
        top = done
    return labels


__all__ = ["check_slide", "slide_labels", "whole_labels"]
