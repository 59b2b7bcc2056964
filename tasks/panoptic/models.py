"""Panoptic model builders by name (`PANOPTIC_MODELS`), as presets name them.

- `panoptic_deeplab`: the Panoptic-DeepLab heads (`deeplab.py`) on any zoo backbone with three
  outputs (fine, middle, coarse), on `TinyConvNet`, or on detectron2's R-52 DC5 when `backbone`
  is None.
- `panoptic_segformer`: Panoptic SegFormer with the ResNet-50 configuration (`segformer.py`).

Every model maps a batch of RGB images in 0..255 to raw outputs with `forward`, and raw outputs to
one panoptic label map per image with `panoptic(raw, sizes)`: (H, W) int64 = contiguous class *
`label_divisor` + instance number (stuff: instance 0), void -1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cvkit.backbones import create_backbone
from cvkit.nn import FeatureSpec
from cvkit.registry import Registry

from .deeplab import ConvNorm, DeepLabResNet, PanopticDeepLab
from .postprocess import get_panoptic_segmentation
from .segformer import PanopticSegFormer

PANOPTIC_MODELS = Registry("panoptic model")

#: head widths of the small synthetic-scene model (the Cityscapes heads are 256 / 128 wide)
SMALL_HEADS = {"sem_seg_head": {"decoder_channels": 32, "head_channels": 32, "aspp_channels": 32,
                                "project_channels": (16, 32)},
               "ins_embed_head": {"decoder_channels": 32, "head_channels": 16, "aspp_channels": 32,
                                  "project_channels": (16, 32)}}


class TinyConvNet(nn.Module):
    """A small plain CNN (3x3 Conv+BN+ReLU stacks) giving strides 4 / 8 / 16: the backbone of the
    synthetic-scene model, cheap enough to train on a CPU in minutes."""

    def __init__(self, widths=(16, 32, 64)):
        super().__init__()
        a, b, c = widths
        self.stage1 = nn.Sequential(ConvNorm(3, a, 3, 2, 1), ConvNorm(a, a, 3, 2, 1), ConvNorm(a, a, 3, 1, 1))
        self.stage2 = nn.Sequential(ConvNorm(a, b, 3, 2, 1), ConvNorm(b, b, 3, 1, 1))
        self.stage3 = nn.Sequential(ConvNorm(b, c, 3, 2, 1), ConvNorm(c, c, 3, 1, 1), ConvNorm(c, c, 3, 1, 1))
        self.feature_spec = FeatureSpec(tuple(widths), (4, 8, 16))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        s4 = self.stage1(x)
        s8 = self.stage2(s4)
        return [s4, s8, self.stage3(s8)]


class DeepLabPanoptic(PanopticDeepLab):
    """PanopticDeepLab with the batch interface of the panoptic Task."""

    @torch.no_grad()
    def panoptic(self, raw: dict, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """(H, W) panoptic label maps of a batch, each cropped to its image size (the batch may be
        padded at the bottom / right)."""
        out = []
        for i, (h, w) in enumerate(sizes):
            sem, center, offset = (raw[k][i, :, :h, :w] for k in ("sem_seg", "center", "offset"))
            labels = sem.max(0, keepdim=True).indices  # argmax (first maximum), several times faster on CPU
            pan, _ = get_panoptic_segmentation(labels, center, offset, self.thing_ids,
                                               self.label_divisor, self.stuff_area, -1, self.center_threshold,
                                               self.nms_kernel, self.top_k)
            out.append(pan[0])
        return out


@PANOPTIC_MODELS.register("panoptic_deeplab", converter="panoptic_deeplab", size_divisor=16)
def build_panoptic_deeplab(backbone: str | None = None, out_indices=(0, 1, 2), small_heads: bool = False,
                           **kwargs) -> DeepLabPanoptic:
    """Panoptic-DeepLab on the zoo backbone `backbone` (its `out_indices` must give three maps,
    e.g. strides 4 / 8 / 16), on TinyConvNet ("tiny_convnet") or on R-52 DC5 (None); `small_heads`
    uses SMALL_HEADS widths; other keyword arguments go to PanopticDeepLab."""
    if backbone is None:
        net = DeepLabResNet()
    elif backbone == "tiny_convnet":
        net = TinyConvNet()
    else:
        net = create_backbone(backbone, out_indices=tuple(out_indices))
    if small_heads:
        kwargs = {**SMALL_HEADS, **kwargs}
    if "crop_size" in kwargs and kwargs["crop_size"] is not None:
        kwargs["crop_size"] = tuple(kwargs["crop_size"])
    return DeepLabPanoptic(net, **kwargs)


@PANOPTIC_MODELS.register("panoptic_segformer", converter="panoptic_segformer", size_divisor=1)
def build_panoptic_segformer(backbone: str | None = None, **kwargs) -> PanopticSegFormer:
    """Panoptic SegFormer on `backbone` (default ResNet-50, the released configuration; a zoo
    backbone's out_indices (1, 2, 3) feed the neck)."""
    return PanopticSegFormer(backbone or "resnet50", **kwargs)


def pad_to(batch: torch.Tensor, divisor: int) -> torch.Tensor:
    """Zero-pad a (B, C, H, W) batch at the bottom / right to multiples of `divisor`."""
    h, w = batch.shape[-2:]
    ph, pw = -h % divisor, -w % divisor
    return F.pad(batch, (0, pw, 0, ph)) if ph or pw else batch
