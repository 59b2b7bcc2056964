"""A dense detector = backbone + neck + head, and the three mmdet 3.3 models cvkit reproduces:
RetinaNet R50-FPN, SSD300 VGG16 and SSDLite MobileNetV2 (any backbone and neck fit any head
through their FeatureSpecs). mmdet checkpoints (`state_dict` with `backbone.`, `neck.`,
`bbox_head.` keys) load through the `mmdet_retinanet` / `mmdet_ssd` converters, without mmcv.
"""
from __future__ import annotations

from torch import Tensor, nn

from cvkit.backbones import create_backbone
from cvkit.necks import create_neck
from cvkit.registry import Registry
from cvkit.weights import CONVERTERS, register_converter

from .postprocess import DetectConfig, Detections
from .retinanet import RetinaHead
from .ssd import SSDHead

SSDLITE_PRIORS = {"strides": (16, 32, 64, 107, 160, 320), "ratios": ((2, 3),) * 6, "input_size": 320,
                  "min_sizes": (48, 100, 150, 202, 253, 304), "max_sizes": (100, 150, 202, 253, 304, 320)}


def ssdlite_head(in_spec, **kwargs) -> SSDHead:
    """SSDHead with depthwise predictors and SSDLite's 320-px priors (6 per location)."""
    return SSDHead(in_spec, **{**SSDLITE_PRIORS, "depthwise": True, **kwargs})


HEADS = Registry("detection head")
"""name -> builder(in_spec, num_classes=..., **kwargs) -> head with forward/predict/loss."""
HEADS.add("retinanet", RetinaHead)
HEADS.add("ssd", SSDHead)
HEADS.add("ssdlite", ssdlite_head)


class Detector(nn.Module):
    """`forward(images)` -> raw (cls list, reg list), one tensor per level; `predict(raw, metas)`
    -> one `Detections` per image in original-image pixels (metas: see postprocess.py);
    `loss(raw, targets)` -> dict of scalar losses (targets: see losses.py)."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        return self.head(self.neck(self.backbone(images)))

    def predict(self, raw: tuple[list[Tensor], list[Tensor]], metas: list[dict],
                cfg: DetectConfig | None = None) -> list[Detections]:
        return self.head.predict(*raw, metas, cfg)

    def loss(self, raw: tuple[list[Tensor], list[Tensor]], targets: list[dict]) -> dict[str, Tensor]:
        return self.head.loss(*raw, targets)


def build_detector(backbone: str | nn.Module, neck: str, head: str, num_classes: int = 80,
                   backbone_kwargs: dict | None = None, neck_kwargs: dict | None = None,
                   head_kwargs: dict | None = None) -> Detector:
    """Backbone (a registered name or a module with `feature_spec`), neck and head by name."""
    if isinstance(backbone, str):
        backbone = create_backbone(backbone, **(backbone_kwargs or {}))
    neck_module = create_neck(neck, backbone.feature_spec, **(neck_kwargs or {}))
    head_module = HEADS.get(head)(neck_module.feature_spec, num_classes=num_classes, **(head_kwargs or {}))
    return Detector(backbone, neck_module, head_module)


def retinanet_r50_fpn(num_classes: int = 80) -> Detector:
    """mmdet retinanet_r50_fpn_1x_coco: ResNet-50 C3-C5, FPN P3-P7 (P6 from C5), RetinaHead."""
    return build_detector("resnet50", "fpn", "retinanet", num_classes, {"out_indices": (1, 2, 3)})


def ssd300_vgg16(num_classes: int = 80) -> Detector:
    """mmdet ssd300_coco (num_classes 80, priors 0.15-0.9) or ssd300_voc0712 (20, 0.2-0.9)."""
    ratio_range = (0.2, 0.9) if num_classes == 20 else (0.15, 0.9)
    return build_detector("vgg16_ssd", "ssd_extra", "ssd", num_classes,
                          head_kwargs={"basesize_ratio_range": ratio_range})


def ssdlite_mobilenet_v2(num_classes: int = 80) -> Detector:
    """mmdet ssdlite_mobilenetv2-scratch_8xb24-600e_coco (320 px)."""
    return build_detector("mobilenet_v2_ssdlite", "ssdlite_extra", "ssdlite", num_classes)


IMAGENET_MEAN, IMAGENET_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)

DETECTORS = Registry("detector")
"""name -> builder(num_classes) -> Detector; meta: the checkpoint converter and the test-time input
of the mmdet config: RGB `mean`/`std` on 0-255 pixels, `input_size` (H, W), `keep_ratio` (resize to
fit within input_size keeping the aspect ratio, then pad to `pad_divisor`) or a plain resize."""
DETECTORS.add("retinanet_r50_fpn", retinanet_r50_fpn, aliases=("retinanet",), converter="mmdet_retinanet",
              mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(800, 1333), keep_ratio=True, pad_divisor=32)
DETECTORS.add("ssd300_vgg16", ssd300_vgg16, aliases=("ssd300",), converter="mmdet_ssd",
              mean=IMAGENET_MEAN, std=(1.0, 1.0, 1.0), input_size=(300, 300), keep_ratio=False, pad_divisor=1)
DETECTORS.add("ssdlite_mobilenet_v2", ssdlite_mobilenet_v2, aliases=("ssdlite",), converter="mmdet_ssd",
              mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(320, 320), keep_ratio=False, pad_divisor=1)


def convert_mmdet_detector(sd: dict, backbone_converter: str) -> dict:
    """An mmdet detector state_dict in cvkit's names: `backbone.*` through the backbone family's
    converter, `neck.*` unchanged, `bbox_head.*` -> `head.*`; other keys pass (and fail strict
    loading by name)."""
    backbone = CONVERTERS.get(backbone_converter)({k: v for k, v in sd.items() if k.startswith("backbone.")})
    out = {f"backbone.{k}": v for k, v in backbone.items()}
    for k, v in sd.items():
        if k.startswith("bbox_head."):
            out["head." + k[len("bbox_head."):]] = v
        elif not k.startswith("backbone."):
            out[k] = v
    return out


@register_converter("mmdet_retinanet")
def convert_mmdet_retinanet(sd):
    """mmdet RetinaNet (ResNet backbone) checkpoints."""
    return convert_mmdet_detector(sd, "resnet")


@register_converter("mmdet_ssd")
def convert_mmdet_ssd(sd):
    """mmdet SSD300/512 (SSDVGG backbone) and SSDLite (MobileNetV2 backbone) checkpoints."""
    mobilenet = "backbone.conv1.conv.weight" in sd
    return convert_mmdet_detector(sd, "mobilenet_v2" if mobilenet else "vgg")
