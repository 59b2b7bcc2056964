"""Segmentation datasets and mmseg-style augmentations.

Layouts (`find_samples` tells them apart):
- folder: DIR/images/NAME.* with DIR/labels/NAME.png (also `annotations/` or `masks/`), palette or grey;
- VOC: DIR/JPEGImages, DIR/SegmentationClass, DIR/ImageSets/Segmentation/{train,val}.txt;
- Cityscapes: DIR/leftImg8bit/SPLIT/CITY/*_leftImg8bit.png with DIR/gtFine/SPLIT/CITY/*_gtFine_labelTrainIds.png;
- ADE20K: DIR/images/{training,validation}/*.jpg with DIR/annotations/... (zero label reduced on load:
  0 -> 255, k -> k - 1).
Label value 255 is ignored everywhere. Bad samples are found when the dataset is opened and skipped with a
warning, and counted (`skipped`, `skip_reasons`): a missing label or image, an RGB label where class indices
are expected, a label of another size than its image, label values beyond the classes (other than 255).

Training augmentations follow mmseg's standard pipeline: RandomResize (ratio 0.5-2.0 of a base scale,
keeping the aspect ratio), RandomCrop with cat_max_ratio 0.75, RandomFlip 0.5, PhotoMetricDistortion, and
padding to the crop size (label 255). Samples are dicts: `image` (3xHxW float, ImageNet-normalised) and
`label` (HxW int64).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cvkit.errors import CvkitError, UsageError

from .metrics import reduce_zero_label

log = logging.getLogger("cvkit.tasks.segment")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LABEL_DIRS = ("labels", "annotations", "masks")
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
IGNORE = 255


# --- layouts ---------------------------------------------------------------------------------------

def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def find_samples(root: str | Path, split: str = "train") -> tuple[str, list[tuple[Path, Path | None]], bool, list[str]]:
    """(layout, [(image, label or None)], reduce_zero_label, problems) for dataset `root`; `split`
    ('train' or 'val') picks VOC's list, Cityscapes' and ADE20K's folder. `problems` are split-file
    entries naming missing images."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"dataset folder not found: {root}")
    problems: list[str] = []
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise UsageError(f"VOC layout without {listing}")
        pairs = []
        for name in listing.read_text().split():
            image = root / "JPEGImages" / f"{name}.jpg"
            if not _inside(root, image) or not image.is_file():
                problems.append(f"{listing.name} names {name}, but {image.name} is missing")
                continue
            label = root / "SegmentationClass" / f"{name}.png"
            pairs.append((image, label if label.is_file() else None))
        return "voc", pairs, False, problems
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        pairs = []
        for image in images:
            stem = image.name[:-len("_leftImg8bit.png")]
            label = root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelTrainIds.png"
            pairs.append((image, label if label.is_file() else None))
        return "cityscapes", pairs, False, problems
    ade = {"train": "training", "val": "validation"}.get(split, split)
    if (root / "images" / ade).is_dir() and (root / "annotations" / ade).is_dir():
        return "ade20k", _same_named(root / "images" / ade, root / "annotations" / ade), True, problems
    labels = next((root / d for d in LABEL_DIRS if (root / d).is_dir()), None)
    if (root / "images").is_dir() and labels is not None:
        return "folder", _same_named(root / "images", labels), False, problems
    raise UsageError(f"{root}: not a segmentation dataset (expected images/ with labels/, a VOC, Cityscapes or "
                     "ADE20K layout)")


def _same_named(images: Path, labels: Path) -> list[tuple[Path, Path | None]]:
    pairs = []
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTS):
        label = labels / f"{image.stem}.png"
        pairs.append((image, label if label.is_file() else None))
    return pairs


def read_label(path: Path) -> np.ndarray:
    """Class indices of a label PNG (palette index or grey value); CvkitError for colour labels."""
    with Image.open(path) as im:
        if im.mode in ("RGB", "RGBA"):
            arr = np.asarray(im.convert("RGB"))
            if not ((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()):
                raise CvkitError("RGB label where class indices are expected (save it palette-indexed or grey)")
            return arr[..., 0].copy()
        if im.mode in ("P", "L", "I;16", "I"):
            return np.asarray(im).copy()
        return np.asarray(im.convert("L")).copy()


# --- augmentations ---------------------------------------------------------------------------------

class RandomResize:
    """Rescale to `scale` (long, short) times a ratio drawn from `ratio_range`, keeping the aspect ratio
    (the largest size that fits both sides), as mmseg's RandomResize with keep_ratio."""

    def __init__(self, scale: Sequence[int], ratio_range: tuple[float, float] = (0.5, 2.0)):
        self.scale, self.ratio_range = tuple(scale), ratio_range

    def __call__(self, image, label, rng):
        ratio = rng.uniform(*self.ratio_range)
        long_side, short_side = max(self.scale) * ratio, min(self.scale) * ratio
        h, w = label.shape
        f = min(long_side / max(h, w), short_side / min(h, w))
        size = (max(1, int(w * f + 0.5)), max(1, int(h * f + 0.5)))
        return (cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
                cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))


class RandomCrop:
    """A random `size` (h, w) crop (smaller images are kept whole); up to 10 tries for a crop where
    no class covers more than `cat_max_ratio` of the labelled pixels (mmseg's cat_max_ratio)."""

    def __init__(self, size: Sequence[int], cat_max_ratio: float = 0.75):
        self.size, self.cat_max_ratio = tuple(size), cat_max_ratio

    def _box(self, shape, rng):
        h, w = shape
        ch, cw = min(self.size[0], h), min(self.size[1], w)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        return y, x, ch, cw

    def __call__(self, image, label, rng):
        y, x, ch, cw = self._box(label.shape, rng)
        if self.cat_max_ratio < 1:
            for _ in range(10):
                counts = np.bincount(label[y:y + ch, x:x + cw].reshape(-1), minlength=256)[:IGNORE]
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                y, x, ch, cw = self._box(label.shape, rng)
        return image[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]


class RandomFlip:
    """Horizontal flip with probability `p`."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, label, rng):
        if rng.random() < self.p:
            return image[:, ::-1], label[:, ::-1]
        return image, label


class PhotoMetricDistortion:
    """mmseg's PhotoMetricDistortion, each step with probability 0.5: brightness (+-32), contrast
    (0.5-1.5) before or after the HSV steps, saturation (0.5-1.5), hue (+-18 in OpenCV's 0-180)."""

    def __call__(self, image, label, rng):
        img = image.astype(np.float32)

        def contrast(x):
            return x * rng.uniform(0.5, 1.5) if rng.random() < 0.5 else x

        if rng.random() < 0.5:
            img = img + rng.uniform(-32, 32)
        img = np.clip(img, 0, 255)
        first = rng.random() < 0.5
        if first:
            img = np.clip(contrast(img), 0, 255)
        hsv = cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
        if rng.random() < 0.5:
            hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
        if rng.random() < 0.5:
            hsv[..., 0] = (hsv[..., 0] + rng.integers(-18, 19)) % 180
        img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
        if not first:
            img = np.clip(contrast(img), 0, 255)
        return img.astype(np.uint8), label


class Pad:
    """Pad at the bottom and right to at least `size` (h, w): image 0, label 255."""

    def __init__(self, size: Sequence[int]):
        self.size = tuple(size)

    def __call__(self, image, label, rng):
        h, w = label.shape
        ph, pw = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        if ph or pw:
            image = cv2.copyMakeBorder(np.ascontiguousarray(image), 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=0)
            label = cv2.copyMakeBorder(np.ascontiguousarray(label), 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE)
        return image, label


def train_pipeline(crop: int | Sequence[int], scale: Sequence[int] | None = None,
                   ratio_range: tuple[float, float] = (0.5, 2.0), cat_max_ratio: float = 0.75) -> list:
    """mmseg's standard training augmentations for crop `crop` around base `scale` (long, short); the
    default scale is (4 x crop, crop), as mmseg's 2048x512 for 512 crops."""
    crop = (crop, crop) if isinstance(crop, int) else tuple(crop)
    scale = tuple(scale) if scale is not None else (4 * max(crop), max(crop))
    return [RandomResize(scale, ratio_range), RandomCrop(crop, cat_max_ratio), RandomFlip(0.5),
            PhotoMetricDistortion(), Pad(crop)]


# --- dataset ---------------------------------------------------------------------------------------

class SegDataset(Dataset):
    """Images and label maps of one split of a dataset folder (module docstring), checked when opened;
    `transforms` (callables (image, label, rng) -> (image, label)) are applied in order, with a numpy
    generator seeded from torch's (so the engine's seed and DataLoader workers apply)."""

    def __init__(self, root: str | Path, num_classes: int, *, split: str = "train", transforms: list | None = None):
        self.root = Path(root)
        self.num_classes = num_classes
        self.layout, pairs, self.reduce_zero_label, problems = find_samples(root, split)
        self.transforms = list(transforms or [])
        self.skip_reasons: list[str] = list(problems)
        self.samples: list[tuple[Path, Path]] = []
        for image, label in pairs:
            reason = self._check(image, label)
            if reason:
                self.skip_reasons.append(f"{image.name}: {reason}")
            else:
                self.samples.append((image, label))
        for reason in self.skip_reasons:
            log.warning("skipping %s", reason)
        if self.skip_reasons:
            log.warning("%d of %d samples in %s skipped", self.skipped, self.skipped + len(self.samples), root)
        if not self.samples:
            raise UsageError(f"no usable samples in {root} (split '{split}')")

    @property
    def skipped(self) -> int:
        return len(self.skip_reasons)

    def _check(self, image: Path, label: Path | None) -> str | None:
        if label is None:
            return "no label"
        try:
            with Image.open(image) as im:
                size = im.size
            values = self._label(label)
        except CvkitError as e:
            return str(e)
        except (OSError, SyntaxError, ValueError) as e:
            return f"unreadable ({e})"
        if (values.shape[1], values.shape[0]) != size:
            return f"label {values.shape[1]}x{values.shape[0]} differs from image {size[0]}x{size[1]}"
        present = np.unique(values)
        bad = present[(present >= self.num_classes) & (present != IGNORE)]
        if bad.size:
            return f"label values {bad[:5].tolist()} beyond the {self.num_classes} classes"
        return None

    def _label(self, path: Path) -> np.ndarray:
        label = read_label(path)
        return reduce_zero_label(label) if self.reduce_zero_label else label

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(HxWx3 RGB uint8 image, HxW label) of sample i, without augmentation."""
        image_path, label_path = self.samples[i]
        bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise CvkitError(f"cannot read {image_path}")
        return np.ascontiguousarray(bgr[..., ::-1]), self._label(label_path).astype(np.uint8)

    def __getitem__(self, i: int) -> dict:
        image, label = self.load(i)
        if self.transforms:
            rng = np.random.default_rng(int(torch.randint(2**62, ())))
            for t in self.transforms:
                image, label = t(image, label, rng)
        image = (np.ascontiguousarray(image).astype(np.float32) - MEAN) / STD
        return {"image": torch.from_numpy(image.transpose(2, 0, 1).copy()),
                "label": torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))}


__all__ = [
    "Pad",
    "PhotoMetricDistortion",
    "RandomCrop",
    "RandomFlip",
    "RandomResize",
    "SegDataset",
    "find_samples",
    "read_label",
    "train_pipeline",
]
