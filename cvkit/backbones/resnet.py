"""ResNet: "Deep Residual Learning for Image Recognition", He et al., CVPR 2016 (arXiv 1512.03385);
cvkit follows torchvision's "v1.5" (pytorch/vision@1f1a920), the backbone of RetinaNet and FCN.

What is new: residual learning, y = F(x) + x, with identity (or 1x1 projection) shortcuts, which
makes 100+ layer plain conv nets trainable. Bottleneck blocks (1x1 reduce, 3x3, 1x1 expand x4)
keep the deep variants cheap; v1.5 puts the stride on the 3x3 conv rather than the first 1x1.

Any input size is taken; sizes follow the official floor((H+2p-k)/s)+1. `cvkit.nn.deploy` folds
each BN into the conv before it. `replace_stride_with_dilation` gives the dilated form of
torchvision's segmentation models (FCN: (False, True, True), output stride 8).

ResNetV1c (`resnet50_v1c`, `resnet101_v1c`; OpenMMLab's backbone of mmseg's FCN/PSPNet/DeepLab
"-d8" models) is the "ResNet-C" tweak of "Bag of Tricks for Image Classification with
Convolutional Neural Networks", He et al., CVPR 2019 (arXiv 1812.01187): `deep_stem=True` replaces
the 7x7 stem conv by three 3x3 convs (32, 32, 64 channels; the first with stride 2), keys
`stem.{0,1,3,4,6,7}`. mmseg's dilations (1, 1, 2, 4) with contract_dilation are
`replace_stride_with_dilation=(False, True, True)` here (the first dilated block takes half the
dilation, i.e. the previous one).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UsageError
from ..nn import FeatureSpec, fuse_conv_bn
from ..nn.conv_bn import ConvBNSequential
from ..weights import register_converter, strip_prefix
from . import register_backbone
from ._base import StageBackbone

PAPER = "Deep Residual Learning for Image Recognition (He et al., CVPR 2016, arXiv 1512.03385)"
PAPER_V1C = ("Bag of Tricks for Image Classification with Convolutional Neural Networks "
             "(He et al., CVPR 2019, arXiv 1812.01187), ResNet-C")


def _fold(module: nn.Module, conv: str, bn: str) -> None:
    setattr(module, conv, fuse_conv_bn(getattr(module, conv), getattr(module, bn)))
    setattr(module, bn, nn.Identity())


class BasicBlock(nn.Module):
    """3x3 (stride) -> BN -> ReLU -> 3x3 -> BN, plus the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: int = 1):
        super().__init__()
        if dilation > 1:
            raise UsageError("ResNet BasicBlock (resnet18/34) has no dilated form")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)

    def reparameterize(self) -> None:
        _fold(self, "conv1", "bn1")
        _fold(self, "conv2", "bn2")


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 (x4), each with BN, ReLU between; shortcut, ReLU."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def reparameterize(self) -> None:
        for i in (1, 2, 3):
            _fold(self, f"conv{i}", f"bn{i}")


def make_layer(block, inplanes: int, planes: int, depth: int, stride: int, dilation: int,
               first_dilation: int) -> nn.Sequential:
    """A stage; the first block takes the stride (and, when dilated, the previous dilation)."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = ConvBNSequential(nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                                      nn.BatchNorm2d(planes * block.expansion))
    layers = [block(inplanes, planes, stride, downsample, first_dilation)]
    layers += [block(planes * block.expansion, planes, dilation=dilation) for _ in range(depth - 1)]
    return nn.Sequential(*layers)


class ResNet(StageBackbone):
    """Stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool; with `deep_stem`, three 3x3 conv-BN-ReLU
    instead of the 7x7) and four stages `layer1..4`.

    `num_classes=0` (dense form): `forward(x)` returns the outputs of `layer{i+1}` for i in
    `out_indices` (strides 4, 8, 16, 32); keys = torchvision's minus `fc` (stages after the last
    requested one are not built and their keys are ignored). `num_classes>0`: torchvision's
    classifier, with `forward_head` / `classify` giving logits.
    """

    def __init__(self, block=Bottleneck, depths=(3, 4, 6, 3),
                 replace_stride_with_dilation=(False, False, False), out_indices=(0, 1, 2, 3),
                 num_classes: int = 0, deep_stem: bool = False):
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.num_classes = num_classes
        self.deep_stem = deep_stem
        n_stages = 4 if num_classes > 0 else max(self.out_indices) + 1
        if deep_stem:
            self.stem = ConvBNSequential(
                nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                nn.Conv2d(32, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes, dilation, stride_now = 64, 1, 4
        channels, strides = [], []
        for i in range(n_stages):
            planes = 64 * 2 ** i
            stride = 1 if i == 0 else 2
            previous = dilation
            if i > 0 and replace_stride_with_dilation[i - 1]:
                dilation *= stride
                stride = 1
            stride_now *= stride
            self.add_module(f"layer{i + 1}", make_layer(block, inplanes, planes, depths[i], stride,
                                                        dilation, previous))
            inplanes = planes * block.expansion
            channels.append(inplanes)
            strides.append(stride_now)
        self.feature_spec = FeatureSpec(tuple(channels), tuple(strides)).select(self.out_indices)
        if num_classes > 0:
            self.fc = nn.Linear(512 * block.expansion, num_classes)
        else:
            self.ignored_keys = ("fc.",) + tuple(f"layer{i + 1}." for i in range(n_stages, 4))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor, last: int = 3) -> list[torch.Tensor]:
        """Outputs of layer1..layer{last+1}."""
        x = self.stem(x) if self.deep_stem else self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        outs = []
        for i in range(last + 1):
            x = getattr(self, f"layer{i + 1}")(x)
            outs.append(x)
        return outs

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from layer4's output: global average pool, then `fc`."""
        return self.fc(x.mean((2, 3)))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[-1])

    def reparameterize(self) -> None:
        if not self.deep_stem:  # the deep stem folds itself (ConvBNSequential)
            _fold(self, "conv1", "bn1")


@register_converter("resnet")
def convert_resnet(sd):
    """torchvision and timm keys are cvkit's; DataParallel's `module.` and OpenMMLab's (and
    torchvision segmentation's) `backbone.` prefixes are dropped, with the keys outside them."""
    return strip_prefix(strip_prefix(sd, "module."), "backbone.")


VARIANTS = {
    "resnet18": {"block": BasicBlock, "depths": (2, 2, 2, 2)},
    "resnet34": {"block": BasicBlock, "depths": (3, 4, 6, 3)},
    "resnet50": {"block": Bottleneck, "depths": (3, 4, 6, 3)},
    "resnet101": {"block": Bottleneck, "depths": (3, 4, 23, 3)},
    "resnet152": {"block": Bottleneck, "depths": (3, 8, 36, 3)},
    "resnet50_v1c": {"block": Bottleneck, "depths": (3, 4, 6, 3), "deep_stem": True},
    "resnet101_v1c": {"block": Bottleneck, "depths": (3, 4, 23, 3), "deep_stem": True},
}


def _register(name: str) -> None:
    def build(**kwargs) -> ResNet:
        return ResNet(**{**VARIANTS[name], **kwargs})

    build.__name__ = name
    register_backbone(name, aliases=(name.replace("resnet", "r"),), family="resnet", converter="resnet",
                      paper=PAPER_V1C if name.endswith("_v1c") else PAPER)(build)


for _name in VARIANTS:
    _register(_name)
