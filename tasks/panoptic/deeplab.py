"""Panoptic-DeepLab: "Panoptic-DeepLab: A Simple, Strong, and Fast Baseline for Bottom-Up Panoptic
Segmentation", Cheng et al., CVPR 2020 (arXiv 1911.10194); layout of detectron2's re-implementation
(facebookresearch/detectron2 @ 02b5c4e, projects/Panoptic-DeepLab).

What is new: panoptic segmentation without proposals. Two DeepLabV3+ branches (each with its own
ASPP and decoder) predict semantic logits and, class-agnostically, a centre heatmap plus a per-pixel
offset to its instance centre; instances come from grouping pixels to the nearest predicted centre
(`postprocess.get_panoptic_segmentation`).

The heads take any backbone through a FeatureSpec of three maps, fine to coarse (detectron2 names
them res2 / res3 / res5: strides 4 / 8 / 16 on its dilated R-52). Keys follow detectron2: a conv
holds its BatchNorm as `.norm` (`x.weight`, `x.norm.*`). The ASPP image pooling is global only when
`crop_size` is None; with a training crop it is an average pool of kernel crop / stride (stride 1),
as in every released config, and the coarsest map must then be a multiple of that kernel
(CvkitError otherwise). `cvkit.nn.deploy` folds every BatchNorm into its conv.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cvkit.errors import CvkitError, UsageError
from cvkit.nn import FeatureSpec, fold_bn
from cvkit.weights import register_converter, strip_prefix

from .postprocess import get_panoptic_segmentation, panoptic_deeplab_instances

CITYSCAPES_THING_IDS = (11, 12, 13, 14, 15, 16, 17, 18)
LEVELS = ("res2", "res3", "res5")


class ConvNorm(nn.Conv2d):
    """detectron2's Conv2d: conv -> optional BatchNorm (`.norm`) -> optional ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, norm: bool = True, act: bool = True):
        super().__init__(in_ch, out_ch, kernel_size, stride, padding, dilation, groups, bias=not norm)
        self.norm = nn.BatchNorm2d(out_ch) if norm else None
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.act else x

    def reparameterize(self) -> None:
        if self.norm is not None:
            w, b = fold_bn(self.weight, self.bias, self.norm)
            self.weight, self.bias, self.norm = nn.Parameter(w), nn.Parameter(b), None


class DepthwiseSeparableConv(nn.Module):
    """Depthwise kxk (dilation) + BN + ReLU, then pointwise 1x1 + BN + ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, dilation: int = 1):
        super().__init__()
        pad = dilation * (kernel_size - 1) // 2
        self.depthwise = ConvNorm(in_ch, in_ch, kernel_size, padding=pad, dilation=dilation, groups=in_ch)
        self.pointwise = ConvNorm(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def conv_stack(in_ch: int, out_ch: int, depthwise_separable: bool, hidden: int | None = None) -> nn.Module:
    """The fuse / head block: one 5x5 depthwise-separable conv, or two 3x3 Conv+BN+ReLU."""
    if depthwise_separable:
        return DepthwiseSeparableConv(in_ch, out_ch, 5)
    hidden = out_ch if hidden is None else hidden
    return nn.Sequential(ConvNorm(in_ch, hidden, 3, padding=1), ConvNorm(hidden, out_ch, 3, padding=1))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and an image-pooling branch,
    concatenated and projected by a 1x1 conv; dropout after the projection (training only)."""

    def __init__(self, in_ch: int, out_ch: int, dilations=(6, 12, 18), pool_kernel: tuple[int, int] | None = None,
                 depthwise_separable: bool = False, dropout: float = 0.1):
        super().__init__()
        branches = [ConvNorm(in_ch, out_ch, 1)]
        for d in dilations:
            branches.append(DepthwiseSeparableConv(in_ch, out_ch, 3, d) if depthwise_separable
                            else ConvNorm(in_ch, out_ch, 3, padding=d, dilation=d))
        pool = nn.AdaptiveAvgPool2d(1) if pool_kernel is None else nn.AvgPool2d(pool_kernel, stride=1)
        branches.append(nn.Sequential(pool, ConvNorm(in_ch, out_ch, 1, norm=False)))
        self.convs = nn.ModuleList(branches)
        self.project = ConvNorm(out_ch * len(branches), out_ch, 1)
        self.pool_kernel = pool_kernel
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        k = self.pool_kernel
        if k is not None and (size[0] % k[0] or size[1] % k[1]):
            raise CvkitError(f"ASPP image pooling: the coarsest feature map {tuple(size)} is not a multiple of "
                             f"the pooling kernel {tuple(k)} (training crop / stride); pad the input or build "
                             "the head with another crop_size")
        res = [conv(x) for conv in self.convs]
        res[-1] = F.interpolate(res[-1], size=size, mode="bilinear", align_corners=False)
        return F.dropout(self.project(torch.cat(res, 1)), self.dropout, self.training)


class DeepLabV3PlusDecoder(nn.Module):
    """DeepLabV3+ decoder (`decoder.res5` = ASPP; `decoder.res3`, `decoder.res2` = 1x1 projection, then
    fuse(cat[projection, upsampled previous])). Base of both Panoptic-DeepLab heads."""

    def __init__(self, spec: FeatureSpec, project_channels=(32, 64), decoder_channels: int = 256,
                 aspp_channels: int = 256, aspp_dilations=(6, 12, 18), aspp_dropout: float = 0.1,
                 depthwise_separable: bool = True, crop_size: tuple[int, int] | None = None):
        super().__init__()
        if len(spec) != 3:
            raise UsageError(f"Panoptic-DeepLab heads take three feature maps (fine, middle, coarse), got {len(spec)}; "
                             "build the backbone with three out_indices, e.g. strides 4, 8, 16")
        pool_kernel = None if crop_size is None else (crop_size[0] // spec.strides[2], crop_size[1] // spec.strides[2])
        self.decoder = nn.ModuleDict()
        self.decoder["res5"] = nn.ModuleDict({"project_conv": ASPP(
            spec.channels[2], aspp_channels, aspp_dilations, pool_kernel, depthwise_separable, aspp_dropout)})
        previous = aspp_channels
        for level, in_ch, proj in (("res3", spec.channels[1], project_channels[1]),
                                   ("res2", spec.channels[0], project_channels[0])):
            self.decoder[level] = nn.ModuleDict({
                "project_conv": ConvNorm(in_ch, proj, 1),
                "fuse_conv": conv_stack(proj + previous, decoder_channels, depthwise_separable)})
            previous = decoder_channels
        self.common_stride = spec.strides[0]

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Decoder output at the finest stride from [fine, middle, coarse] maps."""
        y = self.decoder["res5"]["project_conv"](features[2])
        for level, x in (("res3", features[1]), ("res2", features[0])):
            stage = self.decoder[level]
            p = stage["project_conv"](x)
            y = F.interpolate(y, size=p.shape[-2:], mode="bilinear", align_corners=False)
            y = stage["fuse_conv"](torch.cat([p, y], 1))
        return y

    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.common_stride, mode="bilinear", align_corners=False)


class PanopticDeepLabSemSegHead(DeepLabV3PlusDecoder):
    """Semantic branch: decoder (256) -> `head` -> 1x1 `predictor` to class logits."""

    def __init__(self, spec: FeatureSpec, num_classes: int = 19, decoder_channels: int = 256,
                 head_channels: int = 256, depthwise_separable: bool = True, **decoder_kw):
        super().__init__(spec, decoder_channels=decoder_channels, depthwise_separable=depthwise_separable,
                         **decoder_kw)
        self.head = conv_stack(decoder_channels, head_channels, depthwise_separable)
        self.predictor = nn.Conv2d(head_channels, num_classes, 1)
        nn.init.normal_(self.predictor.weight, 0, 0.001)
        nn.init.zeros_(self.predictor.bias)

    def layers(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits at the finest feature stride."""
        return self.predictor(self.head(self.decode(features)))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits at input resolution (bilinear x common stride)."""
        return self.upsample(self.layers(features))


class PanopticDeepLabInsEmbedHead(DeepLabV3PlusDecoder):
    """Instance branch: decoder (128) -> centre heatmap (two 3x3 convs in both configurations) and
    centre offsets (dy, dx)."""

    def __init__(self, spec: FeatureSpec, decoder_channels: int = 128, head_channels: int = 32,
                 depthwise_separable: bool = True, **decoder_kw):
        super().__init__(spec, decoder_channels=decoder_channels, depthwise_separable=depthwise_separable,
                         **decoder_kw)
        self.center_head = conv_stack(decoder_channels, head_channels, False, hidden=decoder_channels)
        self.center_predictor = nn.Conv2d(head_channels, 1, 1)
        self.offset_head = conv_stack(decoder_channels, head_channels, depthwise_separable, hidden=decoder_channels)
        self.offset_predictor = nn.Conv2d(head_channels, 2, 1)
        for conv in (self.center_predictor, self.offset_predictor):
            nn.init.normal_(conv.weight, 0, 0.001)
            nn.init.zeros_(conv.bias)

    def layers(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(centre heatmap, offsets in finest-stride units) at the finest feature stride."""
        y = self.decode(features)
        return self.center_predictor(self.center_head(y)), self.offset_predictor(self.offset_head(y))

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(centre heatmap, offsets in input pixels) at input resolution; no sigmoid on the heatmap."""
        center, offset = self.layers(features)
        return self.upsample(center), self.upsample(offset) * self.common_stride


class DeepLabStem(nn.Module):
    """Three 3x3 Conv+BN+ReLU (3->64 stride 2, 64->64, 64->128), then 3x3/2 max-pool: stride 4."""

    def __init__(self, out_ch: int = 128):
        super().__init__()
        self.conv1 = ConvNorm(3, out_ch // 2, 3, stride=2, padding=1)
        self.conv2 = ConvNorm(out_ch // 2, out_ch // 2, 3, padding=1)
        self.conv3 = ConvNorm(out_ch // 2, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self.conv3(self.conv2(self.conv1(x))), 3, 2, 1)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1, BN after each; 1x1 `shortcut` + BN when the shape changes."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.shortcut = ConvNorm(in_ch, out_ch, 1, stride, act=False) if in_ch != out_ch else None
        self.conv1 = ConvNorm(in_ch, mid_ch, 1)
        self.conv2 = ConvNorm(mid_ch, mid_ch, 3, stride, padding=dilation, dilation=dilation)
        self.conv3 = ConvNorm(mid_ch, out_ch, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


class DeepLabResNet(nn.Module):
    """detectron2's DeepLab ResNet ("R-52" for depths 3/4/6/3: ResNet-50 with the three-conv stem),
    output stride 16: res5 is not strided, its blocks dilated res5_dilation x multi_grid (2, 4, 8).
    `forward(x)` returns [res2, res3, res5] (strides 4, 8, 16; 256 / 512 / 2048 channels); res4 is
    computed but not returned. Keys: `stem.conv{1,2,3}`, `res{2..5}.{i}.{conv1,conv2,conv3,shortcut}`."""

    def __init__(self, depths=(3, 4, 6, 3), res5_dilation: int = 2, multi_grid=(1, 2, 4)):
        super().__init__()
        self.stem = DeepLabStem()
        in_ch = 128
        for i, depth in enumerate(depths):
            out_ch, mid = 256 * 2 ** i, 64 * 2 ** i
            blocks = []
            for j in range(depth):
                if i == 3:
                    stride, dilation = 1, res5_dilation * multi_grid[j % len(multi_grid)]
                else:
                    stride, dilation = (2 if i > 0 and j == 0 else 1), 1
                blocks.append(BottleneckBlock(in_ch, mid, out_ch, stride, dilation))
                in_ch = out_ch
            self.add_module(f"res{i + 2}", nn.Sequential(*blocks))
        self.feature_spec = FeatureSpec((256, 512, 2048), (4, 8, 16))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        res2 = self.res2(self.stem(x))
        res3 = self.res3(res2)
        return [res2, res3, self.res5(self.res4(res3))]


class PanopticDeepLab(nn.Module):
    """Backbone + semantic head + instance head (keys `backbone.`, `sem_seg_head.`, `ins_embed_head.`).

    `forward(images)` takes RGB batches in 0..255, normalises them with `pixel_mean` / `pixel_std`
    and returns the input-resolution `sem_seg` logits, `center` heatmap and `offset` (pixels).
    `predict(image, output_size)` runs one image the way detectron2's eval forward does: resize to
    the output size (offsets not rescaled), argmax, grouping, and one scored instance per thing
    segment. Defaults are the Cityscapes ones (19 classes, things 11..18, stuff area 2048), except
    `crop_size`: None (global image pooling in the ASPP, any input size); pass the training crop of
    a released checkpoint (Cityscapes 512x1024, COCO 640x640) to reproduce it. `sem_seg_head` /
    `ins_embed_head` are keyword arguments of the two heads (channel widths of smaller models).
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 19, thing_ids=CITYSCAPES_THING_IDS,
                 depthwise_separable: bool = True, crop_size: tuple[int, int] | None = None,
                 label_divisor: int = 1000, stuff_area: int = 2048, center_threshold: float = 0.1,
                 nms_kernel: int = 7, top_k: int = 200,
                 pixel_mean=(123.675, 116.28, 103.53), pixel_std=(58.395, 57.12, 57.375),
                 sem_seg_head: dict | None = None, ins_embed_head: dict | None = None):
        super().__init__()
        self.backbone = backbone
        spec = backbone.feature_spec
        self.sem_seg_head = PanopticDeepLabSemSegHead(spec, num_classes, depthwise_separable=depthwise_separable,
                                                      crop_size=crop_size, **(sem_seg_head or {}))
        self.ins_embed_head = PanopticDeepLabInsEmbedHead(spec, depthwise_separable=depthwise_separable,
                                                          crop_size=crop_size, **(ins_embed_head or {}))
        self.num_classes = num_classes
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)
        self.thing_ids = tuple(thing_ids)
        self.label_divisor, self.stuff_area = label_divisor, stuff_area
        self.center_threshold, self.nms_kernel, self.top_k = center_threshold, nms_kernel, top_k

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone((images - self.pixel_mean) / self.pixel_std)
        center, offset = self.ins_embed_head(features)
        return {"sem_seg": self.sem_seg_head(features), "center": center, "offset": offset}

    @torch.no_grad()
    def predict(self, image: torch.Tensor, output_size: tuple[int, int] | None = None) -> dict:
        """One (3, H, W) image -> `sem_seg` (C, h, w) logits, `center` (1, h, w), `offset` (2, h, w),
        `panoptic_seg` (h, w) int64 (class * label_divisor + instance, void -1) and `instances`
        (pred_classes, scores, pred_boxes xyxy, pred_masks), at `output_size` (default: H, W)."""
        height, width = image.shape[-2:]
        output_size = (height, width) if output_size is None else tuple(output_size)
        out = self(image[None])

        def resize(x: torch.Tensor) -> torch.Tensor:
            x = x[:, :, :height, :width]
            return F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)[0]

        sem_seg, center, offset = resize(out["sem_seg"]), resize(out["center"]), resize(out["offset"])
        panoptic, _ = get_panoptic_segmentation(
            sem_seg.max(0, keepdim=True).indices, center, offset, self.thing_ids, self.label_divisor, self.stuff_area,
            -1, self.center_threshold, self.nms_kernel, self.top_k)
        panoptic = panoptic[0]
        instances = panoptic_deeplab_instances(panoptic, sem_seg.softmax(0), center, self.thing_ids,
                                               self.label_divisor)
        return {"sem_seg": sem_seg, "center": center, "offset": offset, "panoptic_seg": panoptic,
                "instances": instances}


def panoptic_deeplab_r52(**kwargs) -> PanopticDeepLab:
    """Panoptic-DeepLab on detectron2's R-52 DC5 (Cityscapes configs; `depthwise_separable=False` for
    the plain-conv one; ASPP pooling of the 512x1024 training crop unless `crop_size` says otherwise):
    30.3 M parameters with the depthwise-separable heads."""
    return PanopticDeepLab(DeepLabResNet(), **{"crop_size": (512, 1024), **kwargs})


@register_converter("panoptic_deeplab")
def convert_panoptic_deeplab(sd: dict) -> dict:
    """detectron2's Panoptic-DeepLab keys are cvkit's; a DataParallel `module.` prefix is dropped."""
    return strip_prefix(sd, "module.")
