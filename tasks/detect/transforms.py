"""Image + box transforms of the dense detectors' training pipelines (mmdet 3.3's), on numpy.

Each transform is a small class whose `__call__(image, boxes, labels, rng)` returns the three
transformed together (image HxWx3 float32 RGB 0-255, boxes (G, 4) x1y1x2y2, labels (G,)):

- `PhotoMetricDistortion` (SSD): random brightness, contrast, saturation and hue shifts.
- `Expand` (SSD's "zoom out"): the image placed at random on a canvas up to 4x larger, filled with
  the mean colour, so that objects become small.
- `MinIoURandomCrop` (SSD's "zoom in"): a random crop whose IoU with the boxes reaches one of
  the sampled thresholds; boxes whose centre leaves the crop are dropped.
- `RandomFlip`: horizontal flip with probability 0.5.
- `resize_image` (the test-time resize too): fit within the input size keeping the aspect ratio
  (RetinaNet) or a plain resize to it (SSD); `pad_image` pads at the bottom and right.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from cvkit.errors import UsageError
from cvkit.nn.nms import box_iou


def resize_image(
    image: np.ndarray, size: tuple[int, int], keep_ratio: bool
) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize to fit within `size` (H, W) keeping the aspect ratio, or exactly to `size`;
    returns the image and (sx, sy) = new size / old size."""
    h, w = image.shape[:2]
    if keep_ratio:
        s = min(size[0] / h, size[1] / w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
    else:
        nh, nw = size
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if nh < h and nw < w else cv2.INTER_LINEAR
        image = cv2.resize(image, (nw, nh), interpolation=interp)
    return image, (nw / w, nh / h)


def pad_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Zero-pad (after normalisation) at the bottom and right up to `size` (H, W)."""
    h, w = image.shape[:2]
    if (h, w) == tuple(size):
        return image
    out = np.zeros((size[0], size[1], image.shape[2]), image.dtype)
    out[:h, :w] = image
    return out


class PhotoMetricDistortion:
    """Brightness +-32, contrast x[0.5, 1.5] (before or after the colour changes), saturation
    x[0.5, 1.5], hue +-18 degrees; each applied with probability 0.5."""

    def __call__(self, image, boxes, labels, rng: np.random.Generator):
        img = image.astype(np.float32)
        if rng.random() < 0.5:
            img += rng.uniform(-32, 32)
        contrast_first = rng.random() < 0.5
        if contrast_first and rng.random() < 0.5:
            img *= rng.uniform(0.5, 1.5)
        if rng.random() < 0.5 or rng.random() < 0.5:
            hsv = cv2.cvtColor(np.clip(img, 0, 255).astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
            if rng.random() < 0.5:
                hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 1)
            if rng.random() < 0.5:
                hsv[..., 0] = (hsv[..., 0] + rng.uniform(-18, 18)) % 360
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
        if not contrast_first and rng.random() < 0.5:
            img *= rng.uniform(0.5, 1.5)
        return np.clip(img, 0, 255), boxes, labels


class Expand:
    """With probability `prob`, place the image on a (r*H, r*W) canvas of `mean`, r in [1, max_ratio]."""

    def __init__(self, mean, max_ratio: float = 4.0, prob: float = 0.5):
        self.mean, self.max_ratio, self.prob = np.asarray(mean, np.float32), max_ratio, prob

    def __call__(self, image, boxes, labels, rng: np.random.Generator):
        if rng.random() >= self.prob:
            return image, boxes, labels
        h, w = image.shape[:2]
        r = rng.uniform(1, self.max_ratio)
        left, top = int(rng.uniform(0, w * r - w)), int(rng.uniform(0, h * r - h))
        canvas = np.empty((int(h * r), int(w * r), 3), np.float32)
        canvas[:] = self.mean
        canvas[top : top + h, left : left + w] = image
        return canvas, boxes + np.array([left, top, left, top], np.float32), labels


class MinIoURandomCrop:
    """SSD's crop: pick a mode among 'keep' and the IoU thresholds; try up to 50 crops with sides
    in [min_crop, 1] of the image and aspect ratio in [0.5, 2] until the crop's IoU with every box
    reaches the threshold and at least one box centre lies inside; keep the boxes whose centre does."""

    def __init__(self, min_ious=(0.1, 0.3, 0.5, 0.7, 0.9), min_crop: float = 0.3):
        self.modes = (1.0, *min_ious)
        self.min_crop = min_crop

    def __call__(self, image, boxes, labels, rng: np.random.Generator):
        h, w = image.shape[:2]
        while True:
            mode = self.modes[rng.integers(len(self.modes))]
            if mode == 1.0 or len(boxes) == 0:
                return image, boxes, labels
            for _ in range(50):
                nw, nh = rng.uniform(self.min_crop * w, w), rng.uniform(self.min_crop * h, h)
                if not 0.5 <= nh / nw <= 2:
                    continue
                left, top = rng.uniform(0, w - nw), rng.uniform(0, h - nh)
                patch = np.array([int(left), int(top), int(left + nw), int(top + nh)], np.float32)
                if patch[2] <= patch[0] or patch[3] <= patch[1]:
                    continue
                ious = box_iou(torch.from_numpy(patch[None]), torch.from_numpy(boxes)).numpy()[0]
                if ious.min() < mode:
                    continue
                centres = (boxes[:, :2] + boxes[:, 2:]) / 2
                inside = ((centres > patch[:2]) & (centres < patch[2:])).all(1)
                if not inside.any():
                    continue
                x1, y1, x2, y2 = patch.astype(int)
                kept = boxes[inside].copy()
                kept[:, 0::2] = kept[:, 0::2].clip(x1, x2) - x1
                kept[:, 1::2] = kept[:, 1::2].clip(y1, y2) - y1
                return image[y1:y2, x1:x2], kept, labels[inside]


class RandomFlip:
    """Horizontal flip with probability `prob`."""

    def __init__(self, prob: float = 0.5):
        self.prob = prob

    def __call__(self, image, boxes, labels, rng: np.random.Generator):
        if rng.random() >= self.prob:
            return image, boxes, labels
        w = image.shape[1]
        flipped = boxes.copy()
        flipped[:, 0], flipped[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
        return np.ascontiguousarray(image[:, ::-1]), flipped, labels


def train_pipeline(recipe: str, mean) -> list:
    """The augmentations before the resize: "ssd" (distortion, expand, min-IoU crop, flip, as
    mmdet's SSD300/SSDLite configs), "retinanet" (flip only, as retinanet_r50_fpn_1x) or "none"."""
    if recipe == "ssd":
        return [PhotoMetricDistortion(), Expand(mean), MinIoURandomCrop(), RandomFlip()]
    if recipe == "retinanet":
        return [RandomFlip()]
    if recipe == "none":
        return []
    raise UsageError(f"unknown augmentation recipe {recipe!r}; valid: ssd, retinanet, none")
