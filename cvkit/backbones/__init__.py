"""Backbone zoo. Each family lives in its own module here and registers its variants in
BACKBONES; `create_backbone` builds one by name or alias."""
from __future__ import annotations

from torch import nn

from ..registry import Registry
from ..weights import load_weights

BACKBONES = Registry("backbone", package=__name__)
"""name -> builder(**kwargs) -> nn.Module with `feature_spec`; meta: family, converter, url, sha256."""

def register_backbone(name: str, **meta):
    """Decorator for a variant builder; meta: aliases, family, converter, url, sha256, paper."""
    return BACKBONES.register(name, **meta)


def backbone_names() -> list[str]:
    return list(BACKBONES)


def create_backbone(name: str, out_indices=None, weights=None, **kwargs) -> nn.Module:
    """Build backbone `name` (canonical or alias). `out_indices` picks the outputs (fine to
    coarse); `weights` is a path, URL, 'none' or None (random init); extra kwargs go to the
    builder. The returned module's `forward` returns a list of tensors and `feature_spec`
    describes them."""
    builder = BACKBONES.get(name)
    meta = BACKBONES.meta(name)
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    model = builder(**kwargs)
    if weights is not None and str(weights).lower() != "none":
        sha = meta.get("sha256") if str(weights) == meta.get("url") else None
        load_weights(model, weights, converter=meta.get("converter"), sha256=sha)
    return model
