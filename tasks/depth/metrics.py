"""Depth errors exactly as FastDepth reports them (dwofk/fast-depth@e684920 `metrics.py`,
`Result.evaluate` and `AverageMeter`), in float32 like the official code.

Conventions (fixture `metrics/depth_fastdepth`):
- valid pixels: target > 0 OR output > 0. A pixel with no ground truth (0) but a positive
  prediction counts: absrel, lg10, irmse and imae become inf there and rmse/mae take the whole
  prediction as error. Only pixels where both are 0 drop out. Nothing is clamped.
- units: both maps are multiplied by 1000 after masking, so rmse and mae are in millimetres, mse
  in mm^2 and irmse/imae in 1/mm; absrel, lg10 and the deltas are unitless.
- one `evaluate_depth` call pools every pixel of its batch; a dataset value (`DepthMeter`) is the
  mean of the per-batch values weighted by batch size (FastDepth validates with batch size 1, so
  its rmse is the mean of per-image rmse, not the root of the pooled mse).
- no crop by default (FastDepth evaluates its 224x224 centre crop); `eigen_crop=True` keeps rows
  45..470 and columns 41..600 of a 480x640 NYU map (the Eigen crop of BTS, AdaBins and later work,
  there combined with a 1e-3..10 m range and clipped predictions, which are not applied here).
"""
from __future__ import annotations

import math

import torch

from cvkit.errors import CvkitError

METRICS = ("rmse", "mae", "mse", "absrel", "lg10", "delta1", "delta2", "delta3", "irmse", "imae")
EIGEN_CROP = (slice(45, 471), slice(41, 601))


def evaluate_depth(output: torch.Tensor, target: torch.Tensor, eigen_crop: bool = False) -> dict[str, float]:
    """FastDepth's metrics of predicted vs ground-truth depth in metres (any equal shapes, e.g.
    Nx1xHxW; 0 = no ground truth), pooled over all pixels."""
    if output.shape != target.shape:
        raise CvkitError(f"depth prediction {tuple(output.shape)} and ground truth {tuple(target.shape)} "
                         "differ in shape")
    if eigen_crop:
        if tuple(target.shape[-2:]) != (480, 640):
            raise CvkitError(f"the Eigen crop needs 480x640 NYU maps, got {tuple(target.shape[-2:])}")
        output, target = output[(..., *EIGEN_CROP)], target[(..., *EIGEN_CROP)]
    output, target = output.float(), target.float()
    valid = (target > 0) | (output > 0)
    if not valid.any():
        raise CvkitError("no valid depth pixel: prediction and ground truth are 0 everywhere")
    output, target = output[valid] * 1000, target[valid] * 1000
    abs_diff = (output - target).abs()
    mse = float((abs_diff ** 2).mean())
    ratio = torch.max(output / target, target / output)
    abs_inv_diff = (1 / output - 1 / target).abs()
    return {
        "rmse": math.sqrt(mse),
        "mae": float(abs_diff.mean()),
        "mse": mse,
        "absrel": float((abs_diff / target).mean()),
        "lg10": float((torch.log(output) / math.log(10) - torch.log(target) / math.log(10)).abs().mean()),
        "delta1": float((ratio < 1.25).float().mean()),
        "delta2": float((ratio < 1.25 ** 2).float().mean()),
        "delta3": float((ratio < 1.25 ** 3).float().mean()),
        "irmse": math.sqrt(float((abs_inv_diff ** 2).mean())),
        "imae": float(abs_inv_diff.mean()),
    }


class DepthMeter:
    """Dataset metrics as FastDepth's `AverageMeter`: per-batch `evaluate_depth`, averaged with
    the batch size as weight (one inf batch makes the dataset value inf)."""

    def __init__(self, eigen_crop: bool = False):
        self.eigen_crop = eigen_crop
        self.count = 0
        self.sums = dict.fromkeys(METRICS, 0.0)

    def update(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Add one batch (first dimension = images); returns its metrics."""
        result = evaluate_depth(output, target, self.eigen_crop)
        n = output.shape[0]
        self.count += n
        for k, v in result.items():
            self.sums[k] += n * v
        return result

    def compute(self) -> dict[str, float]:
        if not self.count:
            raise CvkitError("no depth maps were evaluated")
        return {k: v / self.count for k, v in self.sums.items()}
