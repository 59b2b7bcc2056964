"""FeatureSpec: the whole coupling between backbones, necks and heads."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureSpec:
    """Channels and strides of a list of feature maps, fine to coarse."""

    channels: tuple[int, ...]
    strides: tuple[int, ...]

    def __post_init__(self):
        if len(self.channels) != len(self.strides):
            raise ValueError("FeatureSpec needs one stride per output")

    def select(self, indices) -> FeatureSpec:
        return FeatureSpec(tuple(self.channels[i] for i in indices),
                           tuple(self.strides[i] for i in indices))

    def __len__(self) -> int:
        return len(self.channels)
