"""FCN: "Fully Convolutional Networks for Semantic Segmentation", Long, Shelhamer & Darrell, CVPR 2015
(arXiv 1411.4038; PAMI version arXiv 1605.06211).

What is new: a classification network made fully convolutional scores every pixel; in-network
upsampling (a transposed convolution initialised to bilinear interpolation) brings the coarse scores
back to the image, and skip connections add finer, shallower scores (FCN-32s -> 16s -> 8s).

Three forms. Each `forward(x)` returns {"out": logits at the input size} and, where the model has an
auxiliary head (built with `aux=True`, for training), also "aux".
- `SkipFCN` (`fcn32s`, `fcn16s`, `fcn8s`): the paper's skip architecture on any backbone, through its
  FeatureSpec. cvkit-native weights.
- `TorchvisionFCN` (`fcn_resnet50`, `fcn_resnet101`): dilated ResNet at output stride 8, FCNHead on
  layer4 and an auxiliary FCNHead on layer3, as pytorch/vision; checkpoints load through the
  `fcn_torchvision` converter.
- `MMSegFCN` (`fcn_r50_d8`, `fcn_r101_d8`): ResNetV1c-d8 (`resnet50_v1c` in cvkit/backbones/resnet.py)
  with mmsegmentation 1.x's FCNHead (two convs, concat_input) and auxiliary FCNHead; checkpoints of the
  mmseg model zoo load through the `fcn_mmseg` converter, without mmcv.

`output_stride` (8 or 16) dilates the last stages instead of striding them, where the backbone has a
dilated form (ResNets with bottleneck blocks); elsewhere it raises UsageError.
"""
from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvkit.backbones import BACKBONES, backbone_names, create_backbone
from cvkit.errors import UsageError
from cvkit.nn import FeatureSpec
from cvkit.nn.conv_bn import ConvBNSequential
from cvkit.nn.conv_module import ConvModule
from cvkit.registry import Registry
from cvkit.weights import register_converter, strip_prefix

PAPER = "Fully Convolutional Networks for Semantic Segmentation (Long et al., CVPR 2015, arXiv 1411.4038)"

SEG_MODELS = Registry("segmentation model")
"""name -> builder(num_classes=..., ...) -> nn.Module; meta: converter (checkpoint layout), paper."""


def dilated_backbone(name: str, output_stride: int | None = None, **kwargs) -> nn.Module:
    """Backbone `name` from the zoo. `output_stride` 8 or 16 replaces the strides of the last two (or
    the last) stages by dilation (ResNets with bottleneck blocks only); None or 32 keeps the plain
    network. Extra kwargs go to `create_backbone`."""
    if output_stride in (None, 32):
        return create_backbone(name, **kwargs)
    if output_stride not in (8, 16):
        raise UsageError(f"output stride must be 8, 16 or 32; got {output_stride}")
    if name not in backbone_names():
        BACKBONES.canonical(name)  # raises the unknown-name error with the closest match
    family = BACKBONES.meta(name).get("family")
    if family != "resnet":
        raise UsageError(f"backbone '{name}' ({family}) has no dilated form, so it cannot give output "
                         f"stride {output_stride}; use a ResNet with bottleneck blocks (resnet50, resnet101, "
                         "resnet50_v1c, ...) or keep stride 32 (fcn8s adds finer skips instead)")
    try:
        return create_backbone(name, replace_stride_with_dilation=(False, output_stride == 8, True), **kwargs)
    except UsageError as e:
        raise UsageError(f"backbone '{name}' cannot give output stride {output_stride}: {e}") from None


# --- FCN-32s / 16s / 8s: the paper's skip architecture ------------------------------------------------

def bilinear_kernel(factor: int) -> Tensor:
    """The 2-D kernel (size 2f - f % 2) with which a stride-f transposed conv does bilinear upsampling."""
    size = 2 * factor - factor % 2
    centre = factor - 1 if size % 2 else factor - 0.5
    taps = 1 - (torch.arange(size, dtype=torch.float64) - centre).abs() / factor
    return (taps[:, None] * taps[None, :]).float()


class BilinearUpsample(nn.ConvTranspose2d):
    """Learnable `factor`x upsampling: a transposed conv (kernel 2f - f % 2, stride f, full Cin x Cout
    kernel) initialised to bilinear interpolation channel by channel (zero off the diagonal), the paper's
    "deconvolution" layer. The output is exactly `factor` times the input size and, at init and away
    from a border of about `factor` pixels, equals bilinear interpolation with align_corners=False."""

    def __init__(self, channels: int, factor: int):
        super().__init__(channels, channels, 2 * factor - factor % 2, factor, factor // 2, bias=False)
        self.factor = factor
        with torch.no_grad():
            self.weight.zero_()
            idx = torch.arange(channels)
            self.weight[idx, idx] = bilinear_kernel(factor)


class FixedBilinearUpsample(nn.Module):
    """The paper's final upsampling, a deconvolution fixed to bilinear, without weights: it
    equals `BilinearUpsample` at init applied channel by channel (zeros outside the input), computed as
    bilinear interpolation of the input padded with one ring of zeros, cropped (about 4x faster on CPU
    than the equivalent depthwise transposed conv)."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        f = self.factor
        y = F.interpolate(F.pad(x, (1, 1, 1, 1)), scale_factor=f, mode="bilinear", align_corners=False)
        return y[..., f:-f, f:-f]


class SkipFCNHead(nn.Module):
    """Score layers (1x1 convs to the classes) on the backbone's coarsest output and on the last output
    of each finer stride down to `stride`; going fine, the running scores are upsampled by the stride ratio
    (2x; learnable, bilinear at init) and the next scores added; a fixed bilinear upsampling by the finest stride ends.

    `stride` 32 / 16 / 8 gives FCN-32s / 16s / 8s on a backbone with outputs at 8, 16 and 32 (any other
    set of strides works the same way). The features must come from an input whose sides are multiples
    of the coarsest stride (`SkipFCN` pads); the output then has the input's size. Score layers start at
    zero, as in the paper.
    """

    def __init__(self, in_spec: FeatureSpec, num_classes: int, stride: int = 8):
        super().__init__()
        if stride not in (8, 16, 32):
            raise UsageError(f"FCN skip stride must be 8, 16 or 32 (FCN-8s/16s/32s); got {stride}")
        coarsest = max(in_spec.strides)
        last_of = {s: i for i, s in enumerate(in_spec.strides)}  # stride -> last output with it
        strides = sorted((s for s in last_of if s >= stride or s == coarsest), reverse=True)
        self.in_index = tuple(last_of[s] for s in strides)  # coarse to fine
        self.score = nn.ModuleList(nn.Conv2d(in_spec.channels[i], num_classes, 1) for i in self.in_index)
        self.upscore = nn.ModuleList(BilinearUpsample(num_classes, a // b) for a, b in pairwise(strides))
        self.upscore_final = FixedBilinearUpsample(strides[-1])
        for conv in self.score:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, feats: list[Tensor]) -> Tensor:
        feats = [feats[i] for i in self.in_index]
        scores = self.score[0](feats[0])
        for up, score, x in zip(self.upscore, self.score[1:], feats[1:]):
            scores = up(scores) + score(x)
        return self.upscore_final(scores)


class SkipFCN(nn.Module):
    """A backbone and a `SkipFCNHead`. The input is zero-padded at the bottom and right to a multiple of
    the backbone's coarsest stride and the logits are cropped back, so any size is taken."""

    def __init__(self, backbone: nn.Module, num_classes: int, stride: int = 8):
        super().__init__()
        self.backbone = backbone
        self.head = SkipFCNHead(backbone.feature_spec, num_classes, stride)
        self.size_divisor = max(backbone.feature_spec.strides)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h, w = x.shape[-2:]
        d = self.size_divisor
        x = F.pad(x, (0, -w % d, 0, -h % d))
        return {"out": self.head(self.backbone(x))[..., :h, :w]}


def _register_skip(stride: int) -> None:
    def build(backbone: str = "resnet50", num_classes: int = 21, backbone_weights=None,
              output_stride: int | None = None, out_indices: tuple[int, ...] | None = None) -> SkipFCN:
        net = dilated_backbone(backbone, output_stride, weights=backbone_weights, out_indices=out_indices)
        return SkipFCN(net, num_classes, stride)

    build.__name__ = f"fcn{stride}s"
    build.__doc__ = (f"FCN-{stride}s on backbone `backbone` (any in the zoo); `out_indices` picks its outputs "
                     "(a truncated backbone, e.g. mobilenet_v2 to stride 16, is smaller).")
    SEG_MODELS.register(f"fcn{stride}s", aliases=(f"fcn-{stride}s",), paper=PAPER)(build)


for _stride in (32, 16, 8):
    _register_skip(_stride)


# --- torchvision's FCN ---------------------------------------------------------------------------------

class FCNHead(ConvBNSequential):
    """torchvision's FCNHead: 3x3 conv to in/4 channels (no bias) -> BN -> ReLU -> Dropout(0.1) -> 1x1
    conv to the classes (bias); keys `0`, `1`, `4`. Deploy folds the BN."""

    def __init__(self, in_channels: int, num_classes: int):
        inter = in_channels // 4
        super().__init__(nn.Conv2d(in_channels, inter, 3, padding=1, bias=False), nn.BatchNorm2d(inter),
                         nn.ReLU(), nn.Dropout(0.1), nn.Conv2d(inter, num_classes, 1))


class TorchvisionFCN(nn.Module):
    """pytorch/vision's `fcn_resnet50/101`: a ResNet dilated to `output_stride` (8 in the release),
    `classifier` = FCNHead on layer4, `aux_classifier` = FCNHead on layer3 (`aux=True`); both outputs are
    resized bilinearly (align_corners=False) to the input. Keys: `backbone.*`, `classifier.*`,
    `aux_classifier.*` (dropped from a checkpoint when built without `aux`)."""

    def __init__(self, backbone: str = "resnet50", num_classes: int = 21, aux: bool = True,
                 output_stride: int = 8):
        super().__init__()
        self.backbone = dilated_backbone(backbone, output_stride, out_indices=(2, 3))
        c3, c4 = self.backbone.feature_spec.channels
        self.classifier = FCNHead(c4, num_classes)
        self.aux_classifier = FCNHead(c3, num_classes) if aux else None
        if not aux:
            self.ignored_keys = ("aux_classifier.",)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        c3, c4 = self.backbone(x)
        out = {"out": F.interpolate(self.classifier(c4), size, mode="bilinear", align_corners=False)}
        if self.aux_classifier is not None:
            out["aux"] = F.interpolate(self.aux_classifier(c3), size, mode="bilinear", align_corners=False)
        return out


@register_converter("fcn_torchvision")
def convert_fcn_torchvision(sd):
    """torchvision's segmentation keys (`backbone.*`, `classifier.*`, `aux_classifier.*`) are cvkit's;
    DataParallel's `module.` is dropped."""
    return strip_prefix(sd, "module.")


@SEG_MODELS.register("fcn_resnet50", aliases=("fcn_r50_tv",), converter="fcn_torchvision", paper=PAPER)
def fcn_resnet50(**kwargs) -> TorchvisionFCN:
    """torchvision's fcn_resnet50 (21 classes by default, as the COCO-with-VOC-labels release)."""
    return TorchvisionFCN("resnet50", **kwargs)


@SEG_MODELS.register("fcn_resnet101", aliases=("fcn_r101_tv",), converter="fcn_torchvision", paper=PAPER)
def fcn_resnet101(**kwargs) -> TorchvisionFCN:
    """torchvision's fcn_resnet101."""
    return TorchvisionFCN("resnet101", **kwargs)


# --- mmsegmentation's FCN ------------------------------------------------------------------------------

class MMSegFCNHead(nn.Module):
    """mmsegmentation 1.x FCNHead on one feature map: `num_convs` 3x3 ConvModules (conv without bias, BN,
    ReLU) to `channels`; with `concat_input`, `conv_cat` (3x3 ConvModule) on cat([input, convs(input)]);
    Dropout2d(0.1); `conv_seg` 1x1 to the classes. Keys `convs.i.conv`, `convs.i.bn`, `conv_cat.*`,
    `conv_seg`."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_convs: int = 2,
                 concat_input: bool = True):
        super().__init__()
        self.convs = nn.Sequential(*(ConvModule(in_channels if i == 0 else channels, channels, 3, padding=1,
                                                bn_eps=1e-5) for i in range(num_convs)))
        self.conv_cat = (ConvModule(in_channels + channels, channels, 3, padding=1, bn_eps=1e-5)
                         if concat_input else None)
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.conv_seg(self.dropout(out))


class MMSegFCN(nn.Module):
    """mmsegmentation's `fcn_r50-d8` EncoderDecoder: ResNetV1c dilated to `output_stride` (8: dilations
    1/1/2/4, strides 1/2/1/1, contract_dilation), `decode_head` = FCNHead(2048 -> 512, two convs,
    concat_input) on layer4, `auxiliary_head` = FCNHead(1024 -> 256, one conv) on layer3 (`aux=True`, loss
    weight 0.4 in mmseg). Logits are resized bilinearly (align_corners=False) to the input. Keys:
    `backbone.stem.*`, `backbone.layer*`, `decode_head.*`, `auxiliary_head.*`."""

    def __init__(self, backbone: str = "resnet50_v1c", num_classes: int = 19, aux: bool = True,
                 output_stride: int = 8):
        super().__init__()
        self.backbone = dilated_backbone(backbone, output_stride, out_indices=(2, 3))
        c3, c4 = self.backbone.feature_spec.channels
        self.decode_head = MMSegFCNHead(c4, 512, num_classes, num_convs=2, concat_input=True)
        self.auxiliary_head = MMSegFCNHead(c3, 256, num_classes, num_convs=1, concat_input=False) if aux else None
        if not aux:
            self.ignored_keys = ("auxiliary_head.",)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        c3, c4 = self.backbone(x)
        out = {"out": F.interpolate(self.decode_head(c4), size, mode="bilinear", align_corners=False)}
        if self.auxiliary_head is not None:
            out["aux"] = F.interpolate(self.auxiliary_head(c3), size, mode="bilinear", align_corners=False)
        return out


@register_converter("fcn_mmseg")
def convert_fcn_mmseg(sd):
    """mmseg EncoderDecoder keys (`backbone.stem.*`, `backbone.layer*`, `decode_head.*`,
    `auxiliary_head.*`; the `state_dict` container is unwrapped before) are cvkit's; `module.` is dropped."""
    return strip_prefix(sd, "module.")


@SEG_MODELS.register("fcn_r50_d8", aliases=("fcn_r50-d8",), converter="fcn_mmseg", paper=PAPER)
def fcn_r50_d8(**kwargs) -> MMSegFCN:
    """mmseg's fcn_r50-d8 (19 Cityscapes classes by default; 150 for ADE20K, 21 for VOC)."""
    return MMSegFCN("resnet50_v1c", **kwargs)


@SEG_MODELS.register("fcn_r101_d8", aliases=("fcn_r101-d8",), converter="fcn_mmseg", paper=PAPER)
def fcn_r101_d8(**kwargs) -> MMSegFCN:
    """mmseg's fcn_r101-d8."""
    return MMSegFCN("resnet101_v1c", **kwargs)
