"""Conv-BN sequences with a deploy form (the torchvision / Caffe-era pattern: conv, BN, activation).

`ConvBNSequential` is an `nn.Sequential` whose `reparameterize()` folds every BatchNorm2d into the
Conv2d right before it (the BN becomes an Identity, so child indices and activations stay put).
"""
from __future__ import annotations

import itertools

from torch import nn

from .fusion import fuse_conv_bn


def fold_conv_bn_pairs(seq: nn.Sequential) -> None:
    """In place: each Conv2d directly followed by a BatchNorm2d in `seq` becomes the fused conv,
    and the BatchNorm2d an Identity."""
    names = list(seq._modules)
    for a, b in itertools.pairwise(names):
        conv, bn = seq._modules[a], seq._modules[b]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            seq._modules[a] = fuse_conv_bn(conv, bn)
            seq._modules[b] = nn.Identity()


class ConvBNSequential(nn.Sequential):
    """A Sequential of convs, BNs and activations; its deploy form folds each conv-BN pair."""

    def reparameterize(self) -> None:
        fold_conv_bn_pairs(self)


def conv_bn_act(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1,
                act: type[nn.Module] = nn.ReLU, eps: float = 1e-5) -> ConvBNSequential:
    """Conv (no bias, 'same' padding for odd kernels) -> BN -> activation; keys `0`, `1`."""
    return ConvBNSequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch, eps=eps), act(inplace=True))
