"""Depth datasets and FastDepth's augmentations.

Two layouts, detected from the folder:
- NYU Depth v2 as FastDepth prepared it: `.h5` files (under `train/` and `val/`, or any folder
  of them) holding `rgb` (3xHxW uint8) and `depth` (HxW float, metres), read with h5py;
- cvkit's folder format: `rgb/<name>.<png|jpg>` with `depth/<name>.png`, 16-bit depth in
  millimetres, 0 = invalid (what `synthetic.write_synthetic` writes).

Samples are checked when the dataset is built: an `.h5` without `rgb`/`depth` or with shapes that
do not match, a depth PNG that is not 16-bit single-channel or not the size of its image, a
missing depth file and an all-invalid depth map are skipped with one warning each and counted in
`skipped`. An empty dataset is a CvkitError.

Items are dicts: `image` 3xHxW float in [0, 1] (normalisation is the model's business),
`depth` 1xHxW float metres (0 = invalid), `index`.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from cvkit.errors import CvkitError

log = logging.getLogger("cvkit.depth")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
COVER = 0.95  # the crop takes 95% of the resized frame (FastDepth: 240x320 -> 228x304)


# -- augmentations (FastDepth's dataloaders/nyu.py, `train_transform` / `val_transform`) -----------

def _resize(img: np.ndarray, factor: float, nearest: bool) -> np.ndarray:
    h, w = img.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return cv2.resize(img, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


def _center_crop(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return img[top:top + size[0], left:left + size[1]]


class ValTransform:
    """Resize so that the output is `COVER` of the frame's short side, then centre-crop `size`
    (height, width): FastDepth's validation pipeline for any output size."""

    def __init__(self, size: tuple[int, int]):
        self.size = tuple(size)

    def base_factor(self, h: int, w: int) -> float:
        return max(self.size[0] / (COVER * h), self.size[1] / (COVER * w))

    def __call__(self, rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self.base_factor(*depth.shape)
        return (_center_crop(_resize(rgb, s, False), self.size),
                _center_crop(_resize(depth, s, True), self.size))


class TrainTransform(ValTransform):
    """FastDepth's training augmentation, applied to image and depth together: scale s in
    [1, 1.5] (depth divided by s: the scene looks s times closer), rotation in [-5, 5] degrees,
    centre crop, horizontal flip with p = 0.5, and colour jitter (brightness, contrast,
    saturation 0.4) on the image. Depth is resampled with nearest neighbours so invalid (0)
    pixels never blend into valid ones."""

    def __init__(self, size: tuple[int, int], rng: random.Random | None = None):
        super().__init__(size)
        self.rng = rng or random.Random()

    def __call__(self, rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = self.rng
        s, angle, flip = r.uniform(1.0, 1.5), r.uniform(-5.0, 5.0), r.random() < 0.5
        factor = self.base_factor(*depth.shape) * s
        rgb, depth = _resize(rgb, factor, False), _resize(depth, factor, True) / s
        h, w = depth.shape
        rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        rgb = cv2.warpAffine(rgb, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        depth = cv2.warpAffine(depth, rot, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
        rgb, depth = _center_crop(rgb, self.size), _center_crop(depth, self.size)
        if flip:
            rgb, depth = rgb[:, ::-1], depth[:, ::-1]
        return self.jitter(rgb), depth

    def jitter(self, rgb: np.ndarray) -> np.ndarray:
        """Brightness, contrast and saturation factors in [0.6, 1.4], in random order."""
        img = rgb.astype(np.float32)
        ops = ["brightness", "contrast", "saturation"]
        self.rng.shuffle(ops)
        for op in ops:
            k = self.rng.uniform(0.6, 1.4)
            grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
            if op == "brightness":
                img = img * k
            elif op == "contrast":
                img = (img - grey.mean()) * k + grey.mean()
            else:
                img = (img - grey[..., None]) * k + grey[..., None]
            img = np.clip(img, 0, 255)
        return img.round().astype(np.uint8)


# -- datasets -----------------------------------------------------------------------------------

def _skip(skipped: list, path: Path, why: str) -> None:
    log.warning("skipping %s: %s", path, why)
    skipped.append((str(path), why))


def _check(rgb_shape: tuple, depth: np.ndarray) -> str | None:
    """Why a sample is bad, or None."""
    depth_shape = depth.shape
    if len(rgb_shape) != 3 or rgb_shape[2] != 3:
        return f"image of shape {tuple(rgb_shape)}, not HxWx3"
    if tuple(depth_shape) != tuple(rgb_shape[:2]):
        return f"depth {depth_shape[1]}x{depth_shape[0]} and image {rgb_shape[1]}x{rgb_shape[0]} differ in size"
    if not (np.isfinite(depth) & (depth > 0)).any():
        return "all-invalid depth map (no pixel > 0)"
    return None


def read_depth_png(path: Path) -> np.ndarray:
    """A 16-bit single-channel PNG in millimetres as float32 metres; CvkitError otherwise."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise CvkitError(f"{path} is not a readable image")
    if raw.dtype != np.uint16 or raw.ndim != 2:
        kind = f"{raw.dtype.itemsize * 8}-bit{' ' + str(raw.shape[2]) + '-channel' if raw.ndim == 3 else ''}"
        raise CvkitError(f"{path} is a {kind} image; depth must be a 16-bit single-channel PNG in millimetres")
    return raw.astype(np.float32) / 1000.0


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise CvkitError(f"{path} is not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        for key in ("rgb", "depth"):
            if key not in f:
                raise CvkitError(f"no '{key}' dataset (keys: {', '.join(f.keys()) or 'none'})")
        rgb, depth = f["rgb"][()], f["depth"][()]
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise CvkitError(f"'rgb' has shape {rgb.shape}, not 3xHxW")
    return np.ascontiguousarray(rgb.transpose(1, 2, 0)).astype(np.uint8), depth.astype(np.float32)


def find_samples(root: str | Path) -> tuple[str, list]:
    """('h5', [paths]) or ('folder', [(rgb, depth or None)]) for a dataset folder."""
    root = Path(root)
    if not root.is_dir():
        raise CvkitError(f"dataset folder not found: {root}")
    h5 = sorted(root.rglob("*.h5"))
    if h5:
        return "h5", h5
    if (root / "rgb").is_dir() and (root / "depth").is_dir():
        images = sorted(p for p in (root / "rgb").rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        pairs = []
        for p in images:
            d = (root / "depth" / p.relative_to(root / "rgb")).with_suffix(".png")
            pairs.append((p, d if d.is_file() else None))
        return "folder", pairs
    raise CvkitError(f"{root} is not a depth dataset: expected .h5 files (NYU, FastDepth layout) or "
                     "rgb/ and depth/ folders (16-bit PNG depth in millimetres)")


class DepthDataset(Dataset):
    """A checked depth dataset (either layout) with a transform (`TrainTransform`,
    `ValTransform` or None for full-size samples). `names` are the samples' paths relative to
    the root without suffix; `skipped` lists (path, reason) of the bad ones."""

    def __init__(self, root: str | Path, transform=None):
        self.root = Path(root)
        self.kind, found = find_samples(self.root)
        self.transform = transform
        self.samples: list = []
        self.skipped: list[tuple[str, str]] = []
        for item in found:
            path = item if self.kind == "h5" else item[0]
            try:
                why = self._validate(item)
            except CvkitError as e:
                why = str(e).replace(f"{path} ", "", 1) if str(e).startswith(str(path)) else str(e)
            if why:
                _skip(self.skipped, path, why)
            else:
                self.samples.append(item)
        if not self.samples:
            raise CvkitError(f"no usable depth samples in {self.root} ({len(self.skipped)} skipped)")
        if self.skipped:
            log.warning("%s: %d bad sample(s) skipped, %d used", self.root, len(self.skipped), len(self.samples))
        base = self.root / "rgb" if self.kind == "folder" else self.root
        self.names = [str((s if self.kind == "h5" else s[0]).relative_to(base).with_suffix(""))
                      for s in self.samples]

    def _validate(self, item) -> str | None:
        if self.kind == "h5":
            rgb, depth = _read_h5(item)
            return _check(rgb.shape, depth)
        rgb_path, depth_path = item
        if depth_path is None:
            return f"no depth map depth/{rgb_path.stem}.png"
        shape = read_rgb(rgb_path).shape
        return _check(shape, read_depth_png(depth_path))

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(HxWx3 uint8 RGB, HxW float32 metres) of sample `index`, untransformed."""
        item = self.samples[index]
        if self.kind == "h5":
            return _read_h5(item)
        return read_rgb(item[0]), read_depth_png(item[1])

    def __getitem__(self, index: int) -> dict:
        rgb, depth = self.load(index)
        if self.transform is not None:
            rgb, depth = self.transform(rgb, depth)
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
        target = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None]
        return {"image": image, "depth": target, "index": index}


def train_val_roots(data: str | Path, val: str | Path | None) -> tuple[Path, Path | None]:
    """FastDepth's `DIR/train` + `DIR/val` when `DIR` has them (and no `val` is given), else
    (`data`, `val`)."""
    data = Path(data)
    if val is None and (data / "train").is_dir() and (data / "val").is_dir():
        return data / "train", data / "val"
    return data, (Path(val) if val is not None else None)


__all__ = ["DepthDataset", "TrainTransform", "ValTransform", "find_samples", "read_depth_png",
           "train_val_roots"]
