"""Deploy-mode algebra: Conv+BN and BN+Linear folding, and the `deploy` walk.

A module that has an inference form defines `reparameterize()`; it may change itself in place
(and return None) or return the module that replaces it. `deploy(model)` applies these
bottom-up on a copy, so a block sees its children already re-parameterised.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Conv followed by eval-mode BN as one conv: W' = W*g/sqrt(v+e), b' = (b-m)*g/sqrt(v+e) + beta."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True,
                      padding_mode=conv.padding_mode).to(conv.weight.device, conv.weight.dtype)
    w, b = fold_bn(conv.weight, conv.bias, bn)
    fused.weight.copy_(w)
    fused.bias.copy_(b)
    return fused


@torch.no_grad()
def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d):
    """Kernel and bias of (conv with `weight`, `bias`) followed by `bn`, as tensors."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = torch.zeros_like(bn.running_mean) if bias is None else bias
    shape = (-1,) + (1,) * (weight.ndim - 1)
    return weight * scale.reshape(shape), (bias - bn.running_mean) * scale + bn.bias


@torch.no_grad()
def fuse_bn_linear(bn: nn.BatchNorm1d, linear: nn.Linear) -> nn.Linear:
    """Eval-mode BN followed by a Linear as one Linear."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    fused = nn.Linear(linear.in_features, linear.out_features, bias=True).to(linear.weight)
    fused.weight.copy_(linear.weight * scale[None, :])
    b = linear.weight @ shift
    fused.bias.copy_(b if linear.bias is None else b + linear.bias)
    return fused


def _walk(module: nn.Module) -> nn.Module:
    for name, child in list(module.named_children()):
        new = _walk(child)
        if new is not child:
            setattr(module, name, new)
    fn = getattr(module, "reparameterize", None)
    if callable(fn):
        out = fn()
        if isinstance(out, nn.Module):
            return out
    return module


def deploy(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The inference graph of `model`: every `reparameterize()` applied bottom-up, in eval mode."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    return _walk(model).eval()
