"""SCNN: "Spatial As Deep: Spatial CNN for Traffic Scene Understanding", Pan et al., AAAI 2018
(arXiv 1712.06080).

What is new: message passing inside a feature map. The map is cut into rows (then columns), and
each slice receives ReLU(conv(previous slice)) from its already-updated neighbour, in four sweeps
(down, up, right, left), so evidence for thin, long, occluded structures such as lane markings
travels across the whole image.

The layout is that of the PyTorch port harryhan618/SCNN_Pytorch@bbe0acf `model.py` (its
`t7_to_pt.py` maps the official Lua weights `vgg_SCNN_DULR_w9.t7` one-to-one): a dilated
VGG16-BN backbone at stride 8 (cvkit's `vgg16_bn_scnn`), then `layer1` (3x3 dilation-4 conv to
1024, 1x1 to 128, each with BN and ReLU), `message_passing`, `layer2` (dropout, 1x1 to 1 + lanes
classes) and the existence branch `fc` on the softmaxed stride-8 map pooled 2x2. The head takes
any backbone's stride-8 output through its FeatureSpec.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cvkit.backbones import create_backbone
from cvkit.errors import CvkitError, UsageError
from cvkit.nn import FeatureSpec
from cvkit.nn.conv_bn import ConvBNSequential
from cvkit.weights import register_converter, strip_prefix

PAPER = ("Spatial As Deep: Spatial CNN for Traffic Scene Understanding "
         "(Pan et al., AAAI 2018, arXiv 1712.06080)")


def sweep(x: torch.Tensor, conv: nn.Conv2d, dim: int, reverse: bool) -> torch.Tensor:
    """One message-passing sweep, written as the paper states it: cut `x` (NCHW) into slices of
    size 1 along `dim` (2 = rows, 3 = columns); keep the first slice, then
    S'_i = S_i + ReLU(conv(S'_{i-1})) with the already-updated previous slice. `reverse` runs the
    same recursion from the last slice to the first."""
    slices = list(x.split(1, dim))
    if reverse:
        slices.reverse()
    out = [slices[0]]
    for s in slices[1:]:
        out.append(s + F.relu(conv(out[-1])))
    if reverse:
        out.reverse()
    return torch.cat(out, dim)


def sweep_fast(x: torch.Tensor, conv: nn.Conv2d, dim: int, reverse: bool) -> torch.Tensor:
    """The same recursion as `sweep` (same numbers up to float rounding), faster: the slice axis
    moves to the front so that every slice is one contiguous (N, C, L) block, each step is a 1-D
    convolution, and results are written into one preallocated tensor instead of concatenated."""
    weight = conv.weight.flatten(2)  # (C, C, 1, k) or (C, C, k, 1) -> (C, C, k)
    pad = weight.shape[-1] // 2
    src = x.movedim(dim, 0).contiguous()  # (S, N, C, L)
    out = torch.empty_like(src)
    order = range(src.shape[0] - 1, -1, -1) if reverse else range(src.shape[0])
    prev = None
    for i in order:
        prev = src[i] if prev is None else src[i] + F.relu(F.conv1d(prev, weight, padding=pad))
        out[i] = prev
    return out.movedim(0, dim)


class MessagePassing(nn.Module):
    """SCNN's four sequential sweeps, DULR: `up_down` (rows, top to bottom), `down_up` (rows, bottom
    to top), `left_right` (columns), `right_left`. Row sweeps use a (1, k) kernel on one row,
    column sweeps a (k, 1) kernel on one column; no bias. `forward` uses `sweep_fast`;
    `forward_plain` is the literal recursion (`sweep`), kept as the reference it is tested
    against."""

    def __init__(self, channels: int = 128, kernel_size: int = 9):
        super().__init__()
        k, p = kernel_size, kernel_size // 2
        self.up_down = nn.Conv2d(channels, channels, (1, k), padding=(0, p), bias=False)
        self.down_up = nn.Conv2d(channels, channels, (1, k), padding=(0, p), bias=False)
        self.left_right = nn.Conv2d(channels, channels, (k, 1), padding=(p, 0), bias=False)
        self.right_left = nn.Conv2d(channels, channels, (k, 1), padding=(p, 0), bias=False)
        for conv in (self.up_down, self.down_up, self.left_right, self.right_left):
            # Small weights: each step adds ReLU(conv(previous slice)), so a gain near one
            # compounds over the ~100 steps of the four sweeps and the activations explode.
            nn.init.normal_(conv.weight, std=0.1 * math.sqrt(2.0 / (channels * k)))

    def _run(self, x: torch.Tensor, step) -> torch.Tensor:
        x = step(x, self.up_down, 2, False)
        x = step(x, self.down_up, 2, True)
        x = step(x, self.left_right, 3, False)
        return step(x, self.right_left, 3, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, sweep_fast)

    def forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, sweep)


def exist_features(num_classes: int, input_size: tuple[int, int]) -> int:
    """fc.0's input size for a model input of `input_size` = (W, H): the stride-8 map pooled 2x2,
    num_classes * (W // 16) * (H // 16) (720 at 256x144, 4500 at 800x288, 2880 at 512x288)."""
    w, h = input_size
    return num_classes * (w // 16) * (h // 16)


class SCNNHead(nn.Module):
    """SCNN on the stride-8 map of any backbone.

    `in_spec` is the backbone's FeatureSpec; the head reads the output with stride 8. `input_size`
    = (W, H) of the model input fixes the existence branch's fc size (the port's rule,
    `exist_features`). `hidden` (1024 in the paper) and `channels` (128) are the widths of layer1's
    two convs; smaller values give a small model (the synthetic preset). `forward(features, image_size)` returns a dict: `seg_pred` (1 + num_lanes
    logits, bilinear with align_corners=True to `image_size` (the port's x8 for sides that are
    multiples of 8), not softmaxed), `exist_pred`
    (num_lanes sigmoid probabilities) and `seg_logits_s8` (the stride-8 logits).
    """

    def __init__(self, in_spec: FeatureSpec, input_size: tuple[int, int], num_lanes: int = 4,
                 channels: int = 128, kernel_size: int = 9, hidden: int = 1024):
        super().__init__()
        if 8 not in in_spec.strides:
            raise UsageError(f"SCNN needs a backbone output at stride 8; this backbone gives strides "
                             f"{in_spec.strides}")
        self.in_index = in_spec.strides.index(8)
        self.input_size = tuple(input_size)
        num_classes = num_lanes + 1
        self.layer1 = ConvBNSequential(
            nn.Conv2d(in_spec.channels[self.in_index], hidden, 3, padding=4, dilation=4, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.message_passing = MessagePassing(channels, kernel_size)
        self.layer2 = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(channels, num_classes, 1))
        self.fc = nn.Sequential(
            nn.Linear(exist_features(num_classes, self.input_size), 128), nn.ReLU(inplace=True),
            nn.Linear(128, num_lanes), nn.Sigmoid())

    def forward(self, features: list[torch.Tensor], image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        x = self.message_passing(self.layer1(features[self.in_index]))
        logits = self.layer2(x)
        seg = F.interpolate(logits, size=tuple(image_size), mode="bilinear", align_corners=True)
        pooled = F.avg_pool2d(logits.softmax(1), 2).flatten(1)
        if pooled.shape[1] != self.fc[0].in_features:
            w, h = self.input_size
            raise CvkitError(f"this SCNN was built for {w}x{h} inputs (existence branch); got "
                             f"{image_size[1]}x{image_size[0]}: resize the input or build the model "
                             f"with input_size=({image_size[1]}, {image_size[0]})")
        return {"seg_pred": seg, "exist_pred": self.fc(pooled), "seg_logits_s8": logits}


class SCNN(nn.Module):
    """Backbone + SCNNHead. `forward(x)` returns the head's dict (seg_pred, exist_pred,
    seg_logits_s8) for NCHW input of size `input_size` (W, H)."""

    def __init__(self, backbone: nn.Module, input_size: tuple[int, int] = (800, 288), num_lanes: int = 4,
                 channels: int = 128, hidden: int = 1024):
        super().__init__()
        self.backbone = backbone
        self.head = SCNNHead(backbone.feature_spec, input_size, num_lanes, channels, hidden=hidden)
        self.num_lanes = num_lanes
        self.input_size = tuple(input_size)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.backbone(x), x.shape[-2:])


def build_scnn(backbone: str = "vgg16_bn_scnn", input_size: tuple[int, int] = (800, 288),
               num_lanes: int = 4, channels: int = 128, hidden: int = 1024) -> SCNN:
    """SCNN on registered backbone `backbone` (default: the paper's dilated VGG16-BN), built to
    take only the backbone's stride-8 output. `input_size` = (W, H): 800x288 for CULane, 512x288
    for TuSimple. `channels` / `hidden`: see SCNNHead."""
    net = create_backbone(backbone)
    strides = net.feature_spec.strides
    if 8 not in strides:
        raise UsageError(f"SCNN needs a backbone output at stride 8; {backbone} gives strides {strides}")
    if len(strides) > 1:
        index = tuple(getattr(net, "out_indices", range(len(strides))))[strides.index(8)]
        net = create_backbone(backbone, out_indices=(index,))
    return SCNN(net, tuple(input_size), num_lanes, channels, hidden)


@register_converter("scnn")
def convert_scnn(sd):
    """The SCNN_Pytorch port's checkpoint (`net` in its container; `module.` if saved from
    DataParallel): `backbone.{i}.*` -> `backbone.features.{i}.*`, `layer1/message_passing/layer2/fc`
    -> `head.*`; the loss's class-weight buffer `ce_loss.weight` is dropped."""
    sd = strip_prefix(sd, "module.")
    out = {}
    for key, value in sd.items():
        if key.startswith("ce_loss."):
            continue
        if key.startswith("backbone.") and key[len("backbone."):][:1].isdigit():
            key = "backbone.features." + key[len("backbone."):]
        elif key.split(".", 1)[0] in ("layer1", "message_passing", "layer2", "fc"):
            key = "head." + key
        out[key] = value
    return out
