"""VGG: "Very Deep Convolutional Networks for Large-Scale Image Recognition", Simonyan & Zisserman,
ICLR 2015 (arXiv 1409.1556); cvkit follows torchvision (pytorch/vision@1f1a920).

What is new: depth from stacks of small 3x3 convs (two 3x3 see what one 5x5 sees, with fewer
weights and more non-linearities), five blocks separated by 2x2 max-pools. Config D = VGG16.

Three forms share the flat `features` Sequential, its indices kept as the official ones:
- torchvision `vgg16` / `vgg16_bn`: taps are the activations entering the 5 pools (strides 1-16).
- mmdet SSDVGG (`vgg16_ssd`, SSD300/512): ceil-mode pools, pool5 3x3/1/p1, then fc6 as a 3x3
  dilation-6 conv (1024) and fc7 as a 1x1 conv (1024); taps 3, 4 are conv4_3 (stride 8) and fc7
  (stride 16). L2Norm and the extra layers belong to the SSD neck.
- SCNN's vgg16_bn (`vgg16_bn_scnn`): pools 4 and 5 removed (indices 33, 43 stay unused) and the
  block-5 convs dilated by 2, so the last tap is at stride 8.

Floor-mode pools need input sides of at least the deepest tap's stride (32 for logits); smaller
inputs raise CvkitError. `cvkit.nn.deploy` folds each BN into its conv (the BN forms).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..errors import CvkitError, UsageError
from ..nn import FeatureSpec
from ..nn.conv_bn import ConvBNSequential
from ..weights import register_converter, strip_prefix
from . import register_backbone

PAPER = ("Very Deep Convolutional Networks for Large-Scale Image Recognition "
         "(Simonyan & Zisserman, ICLR 2015, arXiv 1409.1556)")

VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


class VGG(nn.Module):
    """VGG `features` (+ torchvision's classifier when `num_classes>0`).

    `num_classes=0` (dense form): `forward(x)` returns the taps `out_indices` (fine to coarse);
    keys = the classifier's minus `classifier.*` (layers after the deepest requested tap are not
    built and their keys are ignored). `ssd_fc` and `conv5_dilation=2` select the SSD and SCNN
    forms described in the module docstring; they have no classifier.
    """

    def __init__(self, blocks=VGG16_BLOCKS, batch_norm: bool = False, ceil_mode: bool = False,
                 ssd_fc: bool = False, conv5_dilation: int = 1, out_indices=(0, 1, 2, 3, 4),
                 num_classes: int = 0):
        super().__init__()
        if num_classes > 0 and (ssd_fc or conv5_dilation > 1):
            raise UsageError("the SSD and SCNN forms of VGG have no classifier; use num_classes=0")
        self.out_indices = tuple(out_indices)
        self.num_classes = num_classes
        self.ceil_mode = ceil_mode
        layers, taps, channels, strides = OrderedDict(), [], [], []
        i, in_ch, stride = 0, 3, 1
        for b, (width, depth) in enumerate(blocks):
            dilation = conv5_dilation if b == len(blocks) - 1 else 1
            for _ in range(depth):
                layers[str(i)] = nn.Conv2d(in_ch, width, 3, padding=dilation, dilation=dilation)
                i += 1
                if batch_norm:
                    layers[str(i)] = nn.BatchNorm2d(width)
                    i += 1
                layers[str(i)] = nn.ReLU(inplace=True)
                i += 1
                in_ch = width
            taps.append(i - 1)
            channels.append(width)
            strides.append(stride)
            if ssd_fc and b == len(blocks) - 1:
                layers[str(i)] = nn.MaxPool2d(3, 1, 1)
            elif conv5_dilation == 1 or b < len(blocks) - 2:
                layers[str(i)] = nn.MaxPool2d(2, 2, ceil_mode=ceil_mode)
                stride *= 2
            i += 1  # SCNN drops pools 4 and 5 but keeps their indices unused
        if ssd_fc:
            layers[str(i)] = nn.Conv2d(in_ch, 1024, 3, padding=6, dilation=6)
            layers[str(i + 1)] = nn.ReLU(inplace=True)
            layers[str(i + 2)] = nn.Conv2d(1024, 1024, 1)
            layers[str(i + 3)] = nn.ReLU(inplace=True)
            taps[-1], channels[-1] = i + 3, 1024
        self.taps = tuple(taps)
        self.tap_strides = tuple(strides)
        self.feature_spec = FeatureSpec(tuple(channels), tuple(strides)).select(self.out_indices)
        if num_classes > 0:
            self.features = ConvBNSequential(layers)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(in_ch * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
                nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, num_classes))
        else:
            last = self.taps[max(self.out_indices)]
            kept = OrderedDict((k, m) for k, m in layers.items() if int(k) <= last)
            self.features = ConvBNSequential(kept)
            self.ignored_keys = ("classifier.", "pre_logits.", "head.") + tuple(
                f"features.{k}." for k in layers if int(k) > last)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _check_size(self, x: torch.Tensor, stride: int) -> None:
        if not self.ceil_mode and min(x.shape[-2:]) < stride:
            raise CvkitError(f"VGG needs input sides of at least {stride} pixels here, got "
                             f"{tuple(x.shape[-2:])}")

    def forward_features(self, x: torch.Tensor, last: int | None = None) -> list[torch.Tensor]:
        """The taps 0..last (default: all)."""
        last = len(self.taps) - 1 if last is None else last
        self._check_size(x, self.tap_strides[last])
        outs = []
        for key, layer in self.features.named_children():
            x = layer(x)
            if int(key) in self.taps:
                outs.append(x)
                if len(outs) > last:
                    break
        return outs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = self.forward_features(x, max(self.out_indices))
        return [outs[i] for i in self.out_indices]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last tap: pool 5, adaptive average pool to 7x7, the MLP classifier."""
        for key, layer in self.features.named_children():
            if int(key) > self.taps[-1]:
                x = layer(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        self._check_size(x, 32)
        return self.forward_head(self.forward_features(x)[-1])


@register_converter("vgg")
def convert_vgg(sd):
    """torchvision / timm keys are cvkit's. OpenMMLab SSDVGG (`backbone.features.*`) drops its
    prefix; the SCNN port's `backbone.{i}.*` (its checkpoint's `net`) becomes `features.{i}.*`."""
    sd = strip_prefix(strip_prefix(sd, "module."), "backbone.")
    return {(f"features.{k}" if k[:1].isdigit() else k): v for k, v in sd.items()}


VARIANTS = {
    "vgg16": {},
    "vgg16_bn": {"batch_norm": True},
    "vgg16_ssd": {"ceil_mode": True, "ssd_fc": True, "out_indices": (3, 4)},
    "vgg16_bn_scnn": {"batch_norm": True, "conv5_dilation": 2, "out_indices": (4,)},
}
ALIASES = {"vgg16": (), "vgg16_bn": (), "vgg16_ssd": ("ssdvgg16", "ssd_vgg16"),
           "vgg16_bn_scnn": ("scnn_vgg16",)}


def _register(name: str) -> None:
    def build(**kwargs) -> VGG:
        return VGG(**{**VARIANTS[name], **kwargs})

    build.__name__ = name
    register_backbone(name, aliases=ALIASES[name], family="vgg", converter="vgg", paper=PAPER)(build)


for _name in VARIANTS:
    _register(_name)
