"""What every stage-wise backbone shares: its dense `forward` picks the requested stage outputs."""
from __future__ import annotations

import torch
from torch import nn


class StageBackbone(nn.Module):
    """Base for networks whose `forward_features(x, last)` returns the outputs of stages 0..last;
    `forward` returns those named by `self.out_indices`, fine to coarse."""

    out_indices: tuple[int, ...]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = self.forward_features(x, max(self.out_indices))
        return [outs[i] for i in self.out_indices]
