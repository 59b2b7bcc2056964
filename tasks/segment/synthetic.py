"""Synthetic segmentation scenes: textured shapes of three classes on textured backgrounds.

Each scene has a background of smooth low-saturation noise and one to four shapes, each class with
its own texture and hue band, randomly jittered: discs (class 1, warm hues, dotted), squares (2,
rotated, green hues, striped), triangles (3, blue hues, checkered). Shapes overlap in drawing order.
Class names and colours are `datasets_meta`'s 'synthetic' set. Labels are written as palette PNGs,
the same layout `cvkit train segment --data DIR` reads (DIR/images/NAME.png, DIR/labels/NAME.png).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .datasets_meta import class_set

NUM_CLASSES = 4


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Noise in [0, 1] with about `cells` blobs per side (bicubic-upsampled random grid)."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def _texture(rng: np.random.Generator, cls: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hue 0-180, saturation, value) maps in OpenCV's HSV ranges for a full-image patch of class `cls`."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(4, 9)
    if cls == 0:
        hue = rng.uniform(0, 180) + 20 * _smooth_noise(rng, h, w, 3)
        sat = rng.uniform(10, 60) + 30 * _smooth_noise(rng, h, w, 5)
        val = rng.uniform(60, 200) + 60 * (_smooth_noise(rng, h, w, 6) - 0.5)
        return hue % 180, sat, val
    if cls == 1:  # dots
        pattern = (np.sin(xx * 2 * np.pi / period) * np.sin(yy * 2 * np.pi / period) > 0.3).astype(np.float32)
        hue = rng.uniform(0, 18) + np.zeros((h, w), np.float32)
    elif cls == 2:  # stripes
        angle = rng.uniform(0, np.pi)
        pattern = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0).astype(np.float32)
        hue = rng.uniform(45, 75) + np.zeros((h, w), np.float32)
    else:  # checks
        pattern = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
        hue = rng.uniform(100, 125) + np.zeros((h, w), np.float32)
    sat = rng.uniform(140, 230) + 20 * pattern
    val = rng.uniform(110, 200) + rng.uniform(35, 60) * (pattern - 0.5)
    return hue, sat, val


def _shape_mask(rng: np.random.Generator, cls: int, h: int, w: int) -> np.ndarray:
    size = min(h, w)
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
    r = rng.uniform(0.12, 0.28) * size
    mask = np.zeros((h, w), np.uint8)
    if cls == 1:
        cv2.circle(mask, (round(cx), round(cy)), round(r), 1, -1, cv2.LINE_8)
        return mask.astype(bool)
    n = 4 if cls == 2 else 3
    start = rng.uniform(0, 2 * np.pi)
    angles = start + np.arange(n) * 2 * np.pi / n
    pts = np.stack([cx + r * 1.2 * np.cos(angles), cy + r * 1.2 * np.sin(angles)], 1)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def make_scene(rng: np.random.Generator, height: int = 128, width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (HxWx3 RGB uint8 image, HxW uint8 label map with classes 0..3)."""
    hsv = np.stack(_texture(rng, 0, height, width), -1)
    label = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(1, NUM_CLASSES))
        mask = _shape_mask(rng, cls, height, width)
        hsv[mask] = np.stack(_texture(rng, cls, height, width), -1)[mask]
        label[mask] = cls
    hsv[..., 2] += rng.normal(0, 6, (height, width))
    hsv = np.clip(hsv, 0, [179, 255, 255]).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), label


def write_dataset(root: str | Path, count: int, *, size: int | tuple[int, int] = 128, seed: int = 0) -> Path:
    """Write `count` scenes as root/images/NNNN.png and palette-indexed root/labels/NNNN.png."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    palette = class_set("synthetic").png_palette()
    for i in range(count):
        image, label = make_scene(rng, h, w)
        Image.fromarray(image).save(root / "images" / f"{i:04d}.png")
        png = Image.fromarray(label, mode="P")
        png.putpalette(palette)
        png.save(root / "labels" / f"{i:04d}.png")
    return root


__all__ = ["NUM_CLASSES", "make_scene", "write_dataset"]
