"""Class names and palettes of the segmentation datasets cvkit knows, and of custom class lists.

- VOC (21 classes, 0 = background): the PASCAL VOC colour map (bits of the index spread over R, G, B);
  its label PNGs are palette-indexed with this map, 255 = void.
- Cityscapes (19 train ids): the official `labelTrainIds` colours.
- ADE20K (150 classes, zero label reduced): the SceneParse150 names; colours from the VOC-style
  bit map (index + 1), not mmseg's hand-picked table.
- synthetic (4 classes): the scenes of `cvkit.tasks.segment.synthetic`.
- Any other list of names: colours from the same bit map (index 0 black).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvkit.errors import UsageError
from cvkit.registry import unknown_name_error

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")

CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")
CITYSCAPES_PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
                      (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
                      (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
                      (0, 80, 100), (0, 0, 230), (119, 11, 32))

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag")

SYNTHETIC_CLASSES = ("background", "disc", "square", "triangle")
SYNTHETIC_PALETTE = ((0, 0, 0), (220, 60, 40), (60, 180, 75), (50, 90, 220))


def bitmap_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: (n, 3) uint8, the bits of each index spread over R, G and B."""
    idx = np.arange(n)
    out = np.zeros((n, 3), np.int64)
    for shift in range(8):
        for c in range(3):
            out[:, c] |= ((idx >> (3 * shift + c)) & 1) << (7 - shift)
    return out.astype(np.uint8)


@dataclass(frozen=True)
class ClassSet:
    """Names and (C, 3) uint8 RGB colours of a label set; `name` is the dataset ('custom' otherwise)."""

    name: str
    classes: tuple[str, ...]
    palette: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def png_palette(self) -> list[int]:
        """A 768-entry flat palette for a 'P' mode PNG: the class colours, then the bit map (255 white)."""
        full = bitmap_palette(256)
        full[:len(self.palette)] = self.palette[:256]
        full[255] = 255
        return full.reshape(-1).tolist()


def _bitmap_for(n: int, offset: int = 0) -> np.ndarray:
    return bitmap_palette(n + offset)[offset:]


DATASETS = {
    "voc": lambda: ClassSet("voc", VOC_CLASSES, bitmap_palette(21)),
    "cityscapes": lambda: ClassSet("cityscapes", CITYSCAPES_CLASSES, np.array(CITYSCAPES_PALETTE, np.uint8)),
    "ade20k": lambda: ClassSet("ade20k", ADE20K_CLASSES, _bitmap_for(150, 1)),
    "synthetic": lambda: ClassSet("synthetic", SYNTHETIC_CLASSES, np.array(SYNTHETIC_PALETTE, np.uint8)),
}


def class_set(spec: str | list | tuple | None, num_classes: int | None = None) -> ClassSet:
    """The ClassSet for a dataset name ('voc', 'cityscapes', 'ade20k', 'synthetic'), a list of class
    names, or None (names 'class0'...). `num_classes`, when given, must agree with the set (a None spec
    is sized by it)."""
    if spec is None:
        if num_classes is None:
            raise UsageError("the number of classes is unknown: give classes or --num-classes")
        names = tuple(f"class{i}" for i in range(num_classes))
        out = ClassSet("custom", names, bitmap_palette(max(num_classes, 1))[:num_classes])
    elif isinstance(spec, str):
        key = spec.lower()
        if key not in DATASETS:
            raise unknown_name_error("class set", spec, DATASETS)
        out = DATASETS[key]()
    else:
        names = tuple(str(c) for c in spec)
        if not names:
            raise UsageError("the class list is empty")
        out = ClassSet("custom", names, bitmap_palette(max(len(names), 1))[:len(names)])
    if num_classes is not None and num_classes != out.num_classes:
        raise UsageError(f"{out.name} has {out.num_classes} classes, but {num_classes} were asked for")
    return out


__all__ = [
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "DATASETS",
    "VOC_CLASSES",
    "ClassSet",
    "bitmap_palette",
    "class_set",
]
