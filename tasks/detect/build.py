"""Detectors from presets: any backbone x neck (fpn, rcnet, sepc after fpn, SSD extras) x head,
the mmdet models of DETECTORS, class names and the test-time input recipe.

A preset's `model` is a DETECTORS name (`retinanet_r50_fpn`, `ssd300_vgg16`, `ssdlite_mobilenet_v2`)
or `detector`, built from `backbone`, `neck` and `head`. `args` may hold `num_classes`,
`backbone_kwargs`, `neck_kwargs`, `head_kwargs`, the input recipe (`mean`, `std`, `keep_ratio`,
`pad_divisor`) and `conf`, `iou`, `max_det`, the score threshold, NMS IoU and detections per
image `cvkit detect` and `cvkit export --nms` use by default (evaluation keeps the head's
test-time threshold); `imgsz` is the input size (int or [H, W]); `classes` a list of
names or "coco" / "voc" (COCO's 80 by default).

Neck names: `fpn`, `rcnet`, `sepc` / `sepc_lite` (an FPN followed by SEPC; the head's class branch
reads SEPC's cls features and its box branch the loc features), `ssd_extra`, `ssdlite_extra`.
The backbone levels each neck reads: C3-C5 (the last three of a four-stage backbone) for FPN,
RCNet and SEPC; the last two for SSDLite's extras, the middle two for SSD's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cvkit.backbones import create_backbone
from cvkit.errors import UsageError
from cvkit.necks import create_neck, neck_names
from cvkit.registry import unknown_name_error

from .data import VOC_CLASSES
from .detector import DETECTORS, HEADS, IMAGENET_MEAN, IMAGENET_STD, Detector
from .retinanet import RetinaHead

COCO_CLASSES = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)
COCO_CATEGORY_IDS = (
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    27,
    28,
    31,
    32,
    33,
    34,
    35,
    36,
    37,
    38,
    39,
    40,
    41,
    42,
    43,
    44,
    46,
    47,
    48,
    49,
    50,
    51,
    52,
    53,
    54,
    55,
    56,
    57,
    58,
    59,
    60,
    61,
    62,
    63,
    64,
    65,
    67,
    70,
    72,
    73,
    74,
    75,
    76,
    77,
    78,
    79,
    80,
    81,
    82,
    84,
    85,
    86,
    87,
    88,
    89,
    90,
)
"""The COCO category id of each of the 80 classes (what COCO results JSON files use)."""

NECK_STRIDES = {
    "fpn": (8, 16, 32),
    "rcnet": (8, 16, 32),
    "sepc": (8, 16, 32),
    "sepc_lite": (8, 16, 32),
    "ssd_extra": (8, 16),
    "ssdlite_extra": (16, 32),
}
"""The backbone strides each neck reads by default (C3-C5 for FPN-style necks, as in the papers)."""


def default_levels(backbone: str, neck: str, **backbone_kwargs) -> tuple[int, ...]:
    """Indices of `backbone`'s outputs at the strides `neck` reads (NECK_STRIDES): a backbone
    whose first stage is at stride 2 (MobileNetV1) or 8 (LSNet) gets the same strides as one
    starting at stride 4."""
    with torch.device("meta"):
        strides = create_backbone(backbone, **backbone_kwargs).feature_spec.strides
    wanted = NECK_STRIDES.get(neck, NECK_STRIDES["fpn"])
    levels = tuple(i for i, s in enumerate(strides) if s in wanted)
    if len(levels) != len(wanted):
        raise UsageError(f"--neck {neck} reads strides {'/'.join(map(str, wanted))} but {backbone} has strides "
                         f"{'/'.join(map(str, strides))}; choose its levels with "
                         "--set args.backbone_kwargs.out_indices=[...]")
    return levels


@dataclass(frozen=True)
class InputRecipe:
    """Test-time input: RGB `mean`/`std` on 0-255 pixels, `size` (H, W), `keep_ratio` (fit within
    `size`, then pad to a multiple of `pad_divisor`) or a plain resize to `size`."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: tuple[int, int]
    keep_ratio: bool
    pad_divisor: int


class NeckChain(nn.Sequential):
    """Necks applied in turn (mmdet's list neck: keys `neck.0.*`, `neck.1.*`)."""

    def __init__(self, *necks: nn.Module):
        super().__init__(*necks)
        self.feature_spec = necks[-1].feature_spec


class SepcRetinaHead(RetinaHead):
    """RetinaHead reading SEPC's (cls_feat, loc_feat) pairs: its class convs run on the first, its
    box convs on the second (SEPC's configs use no stacked convs: `stacked_convs=0`)."""

    def forward(self, feats: list[tuple[Tensor, Tensor]]) -> tuple[list[Tensor], list[Tensor]]:
        cls_scores, bbox_preds = [], []
        for c, r in feats:
            for conv in self.cls_convs:
                c = conv(c)
            for conv in self.reg_convs:
                r = conv(r)
            cls_scores.append(self.retina_cls(c))
            bbox_preds.append(self.retina_reg(r))
        return cls_scores, bbox_preds


def class_names(spec, num_classes: int | None = None) -> list[str]:
    """Names from a preset's `classes` ("coco", "voc" or a list); COCO's 80 when absent."""
    if spec is None or spec == "coco":
        names = list(COCO_CLASSES)
    elif spec == "voc":
        names = list(VOC_CLASSES)
    elif isinstance(spec, list):
        names = [str(c) for c in spec]
    else:
        raise UsageError(f"preset classes must be 'coco', 'voc' or a list of names, not {spec!r}")
    if num_classes is not None and num_classes != len(names):
        if spec is None:
            return [f"class{i}" for i in range(num_classes)]
        raise UsageError(f"the preset names {len(names)} classes but its model has {num_classes}")
    return names


def build_composed(
    backbone: str,
    neck: str,
    head: str,
    num_classes: int,
    backbone_kwargs: dict | None = None,
    neck_kwargs: dict | None = None,
    head_kwargs: dict | None = None,
) -> Detector:
    """Backbone `backbone` + neck `neck` (see the module docstring) + head from HEADS."""
    backbone_kwargs, neck_kwargs, head_kwargs = (
        dict(backbone_kwargs or {}),
        dict(neck_kwargs or {}),
        dict(head_kwargs or {}),
    )
    valid = sorted(set(NECK_STRIDES) | set(neck_names()))
    if neck not in valid:
        raise unknown_name_error("neck", neck, valid)
    if head not in HEADS:
        raise unknown_name_error("head", head, list(HEADS))
    if "out_indices" not in backbone_kwargs:
        backbone_kwargs["out_indices"] = default_levels(backbone, neck, **backbone_kwargs)
    net = create_backbone(backbone, **backbone_kwargs)
    if neck in ("sepc", "sepc_lite"):
        if head != "retinanet":
            raise UsageError(
                f"SEPC feeds a RetinaNet head (cls and loc features); --head {head} cannot use it"
            )
        first = create_neck("fpn", net.feature_spec, **neck_kwargs)
        neck_module = NeckChain(first, create_neck(neck, first.feature_spec))
        head_kwargs.setdefault("stacked_convs", 0)
        head_module = SepcRetinaHead(neck_module.feature_spec, num_classes=num_classes, **head_kwargs)
    else:
        neck_module = create_neck(neck, net.feature_spec, **neck_kwargs)
        head_module = HEADS.get(head)(neck_module.feature_spec, num_classes=num_classes, **head_kwargs)
    return Detector(net, neck_module, head_module)


def _size(imgsz) -> tuple[int, int] | None:
    if imgsz is None:
        return None
    if isinstance(imgsz, int):
        return (imgsz, imgsz)
    if isinstance(imgsz, list) and len(imgsz) == 2 and all(isinstance(v, int) for v in imgsz):
        return (imgsz[0], imgsz[1])
    raise UsageError(f"imgsz must be an int or [H, W], not {imgsz!r}")


def build_from_preset(
    preset: dict, num_classes: int | None = None
) -> tuple[Detector, InputRecipe, list[str], str | None]:
    """(model, input recipe, class names, checkpoint converter) for a validated preset; `num_classes`
    overrides the preset's (training on a dataset with other classes)."""
    args = dict(preset.get("args") or {})
    names_spec = preset.get("classes")
    if num_classes is None:
        num_classes = args.get("num_classes") or len(class_names(names_spec))
    model_name = preset["model"]
    if model_name == "detector":
        missing = [k for k in ("backbone", "neck", "head") if not preset.get(k)]
        if missing:
            raise UsageError(f"preset '{preset['name']}': model 'detector' needs {', '.join(missing)}")
        model = build_composed(
            preset["backbone"],
            preset["neck"],
            preset["head"],
            num_classes,
            args.get("backbone_kwargs"),
            args.get("neck_kwargs"),
            args.get("head_kwargs"),
        )
        meta = {
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "converter": None,
            "keep_ratio": preset["head"] == "retinanet",
            "pad_divisor": 32 if preset["head"] == "retinanet" else 1,
            "input_size": {"retinanet": (640, 640), "ssd": (300, 300), "ssdlite": (320, 320)}[preset["head"]],
        }
    else:
        if model_name not in DETECTORS:
            raise unknown_name_error("detector", model_name, ["detector", *DETECTORS])
        model = DETECTORS.get(model_name)(num_classes)
        meta = DETECTORS.meta(model_name)
    size = _size(preset.get("imgsz")) or tuple(meta["input_size"])
    keep = args.get("keep_ratio", meta["keep_ratio"])
    recipe = InputRecipe(
        tuple(args.get("mean", meta["mean"])),
        tuple(args.get("std", meta["std"])),
        size,
        bool(keep),
        int(args.get("pad_divisor", meta["pad_divisor"] if keep else 1)),
    )
    names = (
        class_names(names_spec, num_classes)
        if preset.get("classes") is not None or num_classes == 80
        else [f"class{i}" for i in range(num_classes)]
    )
    converter = (preset.get("weights") or {}).get("converter") or meta.get("converter")
    return model, recipe, names, converter


def num_classes_in(sd: dict[str, torch.Tensor], model: Detector) -> int | None:
    """The class count a detector checkpoint (cvkit names) was made for, from its class predictor."""
    head = model.head
    if isinstance(head, RetinaHead) and "head.retina_cls.weight" in sd:
        return sd["head.retina_cls.weight"].shape[0] // head.anchor_generator.num_base_anchors[0]
    key = next(
        (
            k
            for k in sd
            if k.startswith("head.cls_convs.0.")
            and k.endswith("weight")
            and sd[k].ndim == 4
            and sd[k].shape[1] != 1
        ),
        None,
    )
    if key is not None and hasattr(head, "anchor_generator"):
        per_class = sd[key].shape[0] // head.anchor_generator.num_base_anchors[0]
        return per_class - 1
    return None
