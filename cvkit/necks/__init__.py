"""Necks: modules between a backbone and a head. Each family lives in its own module here and
registers its builders in NECKS; a builder takes the FeatureSpec of its inputs and returns a
module with its own `feature_spec` whose `forward(list[Tensor])` returns the neck's outputs."""
from __future__ import annotations

from torch import nn

from ..nn.spec import FeatureSpec
from ..registry import Registry
from ..weights import load_weights

NECKS = Registry("neck", package=__name__)
"""name -> builder(in_spec, **kwargs) -> nn.Module with `feature_spec`; meta: family, converter, paper."""

def register_neck(name: str, **meta):
    """Decorator for a neck builder; meta: aliases, family, converter, paper."""
    return NECKS.register(name, **meta)


def neck_names() -> list[str]:
    return list(NECKS)


def create_neck(name: str, in_spec: FeatureSpec, weights=None, **kwargs) -> nn.Module:
    """Build neck `name` (canonical or alias) for inputs described by `in_spec`; `weights` is a
    path, URL, 'none' or None (random init), converted with the neck's registered converter."""
    model = NECKS.get(name)(in_spec, **kwargs)
    if weights is not None and str(weights).lower() != "none":
        load_weights(model, weights, converter=NECKS.meta(name).get("converter"))
    return model
