"""Panoptic data: a synthetic scene generator, a COCO panoptic reader and Panoptic-DeepLab targets.

- `make_synthetic(root, n)`: scenes of circles, squares and triangles (things, any colour) over a
  sky and a ground region (stuff) split by a wavy horizon, written in COCO panoptic format:
  `images/*.png`, `panoptic/*.png` (segment id = R + 256 G + 256^2 B) and `panoptic.json`
  (images, annotations with `segments_info`, categories with `isthing`).
- `PanopticDataset(root)`: reads that layout, COCO's (`annotations/panoptic_<split>.json`, PNGs
  in `annotations/panoptic_<split>/`, images in `<split>/`) or Cityscapes' panoptic one
  (`gtFine/cityscapes_panoptic_<split>.json` + PNG folder, images in `leftImg8bit/<split>/<city>/`). A bad sample (PNG ids missing from
  `segments_info` or the reverse, an unknown category, a segment id listed twice, a PNG of
  another size than its image, an unreadable file) is skipped with a one-line warning and counted
  in `skipped`.
- `deeplab_targets`: the Panoptic-DeepLab targets of detectron2's target generator: semantic
  labels (void / crowd = `ignore`), semantic weights (`small_weight` on instances smaller than
  `small_area`), a Gaussian centre heatmap (sigma 8) at each instance's mean pixel, offsets
  (dy, dx) from each thing pixel to its centre, and the centre / offset loss weights.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from cvkit.errors import CvkitError, UsageError

from .metrics import id2rgb, rgb2id

log = logging.getLogger("cvkit.panoptic")

IGNORE = 255
SYNTHETIC_CATEGORIES = [{"id": 1, "name": "sky", "isthing": 0}, {"id": 2, "name": "ground", "isthing": 0},
                        {"id": 3, "name": "circle", "isthing": 1}, {"id": 4, "name": "square", "isthing": 1},
                        {"id": 5, "name": "triangle", "isthing": 1}]


# ---------------------------------------------------------------------------------------------
# synthetic scenes


def synthetic_scene(rng: np.random.Generator, size: int = 128, max_things: int = 4, unit: int | None = None):
    """(RGB uint8 image, (H, W) segment ids, segments_info) of one scene; shapes are sized as in a
    scene of `unit` pixels (default `size`)."""
    h = w = size
    ys, xs = np.mgrid[:h, :w]
    horizon = rng.uniform(0.3, 0.6) * h + rng.uniform(0, 0.08) * h * np.sin(
        xs[0] / w * 2 * np.pi * rng.uniform(0.5, 2) + rng.uniform(0, 2 * np.pi))
    ids = np.where(ys < horizon[None, :], 1, 2).astype(np.int64)
    sky = rng.uniform([90, 140, 190], [150, 200, 255])
    ground = rng.uniform([60, 90, 30], [140, 150, 90])
    shade = (ys / h)[..., None]
    image = np.where((ids == 1)[..., None], sky * (1.1 - 0.3 * shade), ground * (0.8 + 0.3 * shade))
    cats = {1: 1, 2: 2}
    for k in range(int(rng.integers(1, max_things + 1))):
        cat = int(rng.integers(3, 6))
        r = rng.uniform(0.07, 0.18) * (unit or size)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        mask = np.zeros((h, w), np.uint8)
        if cat == 3:
            cv2.circle(mask, (round(cx), round(cy)), round(r), 1, -1)
        elif cat == 4:
            a = rng.uniform(0, np.pi / 2)
            pts = [(cx + r * np.cos(a + i * np.pi / 2), cy + r * np.sin(a + i * np.pi / 2)) for i in range(4)]
            cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
        else:
            a = rng.uniform(0, 2 * np.pi)
            pts = [(cx + r * np.cos(a + i * 2 * np.pi / 3), cy + r * np.sin(a + i * 2 * np.pi / 3)) for i in range(3)]
            cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
        seg_id = 3 + k
        ids[mask > 0] = seg_id
        image[mask > 0] = rng.uniform(0, 255, 3)
        cats[seg_id] = cat
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    segments = []
    for seg_id, area in zip(*np.unique(ids, return_counts=True)):
        seg_id, area = int(seg_id), int(area)
        if cats[seg_id] > 2 and area < 16:
            ids[ids == seg_id] = 0  # mostly hidden: void
            continue
        yy, xx = np.nonzero(ids == seg_id)
        segments.append({"id": seg_id, "category_id": cats[seg_id], "iscrowd": 0, "area": area,
                         "bbox": [int(xx.min()), int(yy.min()), int(xx.max() - xx.min() + 1),
                                  int(yy.max() - yy.min() + 1)]})
    return image, ids, segments


def make_synthetic(root: str | Path, n: int, *, size: int = 128, seed: int = 0, max_things: int = 4) -> Path:
    """Write `n` synthetic scenes in COCO panoptic format under `root`; returns the JSON path."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "panoptic").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(n):
        image, ids, segments = synthetic_scene(rng, size, max_things)
        name = f"{i:06d}.png"
        cv2.imwrite(str(root / "images" / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "panoptic" / name), cv2.cvtColor(id2rgb(ids), cv2.COLOR_RGB2BGR))
        images.append({"id": i, "file_name": name, "height": size, "width": size})
        annotations.append({"image_id": i, "file_name": name, "segments_info": segments})
    path = root / "panoptic.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": SYNTHETIC_CATEGORIES}))
    return path


# ---------------------------------------------------------------------------------------------
# reading COCO panoptic


class BadSample(Exception):
    """A sample that cannot be used (the message says why)."""


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BadSample(f"cannot read {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def find_layout(root: str | Path) -> tuple[Path, Path, Path]:
    """(JSON, PNG folder, image folder) of a COCO panoptic dataset folder (cvkit's synthetic
    layout or COCO's)."""
    root = Path(root)
    if (root / "panoptic.json").is_file():
        return root / "panoptic.json", root / "panoptic", root / "images"
    found = sorted((root / "annotations").glob("panoptic_*.json")) if (root / "annotations").is_dir() else []
    if len(found) == 1:
        js = found[0]
        return js, js.with_suffix(""), root / js.stem[len("panoptic_"):]
    found = sorted((root / "gtFine").glob("cityscapes_panoptic_*.json")) if (root / "gtFine").is_dir() else []
    if len(found) == 1:
        js = found[0]
        return js, js.with_suffix(""), root / "leftImg8bit" / js.stem[len("cityscapes_panoptic_"):]
    if not root.exists():
        raise UsageError(f"dataset folder not found: {root}")
    raise UsageError(f"{root} is not a COCO panoptic dataset: expected panoptic.json + panoptic/ + images/, "
                     "one annotations/panoptic_<split>.json with annotations/panoptic_<split>/ and <split>/, or "
                     "Cityscapes' gtFine/cityscapes_panoptic_<split>.json with its PNG folder and leftImg8bit/<split>/")


class PanopticDataset(Dataset):
    """COCO panoptic samples as dicts of tensors.

    Each item: `image` (3, H, W) float 0..255 and either the Panoptic-DeepLab training targets
    (`targets=True`, see `deeplab_targets`) or the ground truth for evaluation: `gt_ids` (H, W)
    int64 segment ids and `gt_segments` (K, 4) int64 rows [id, category_id, iscrowd, area].
    `flip` mirrors images at random (training). Categories are `self.categories` in JSON order;
    contiguous class c is `self.categories[c]`.
    """

    def __init__(self, root: str | Path, *, targets: bool = False, flip: bool = False, sigma: float = 8.0,
                 small_area: int = 256, small_weight: float = 3.0):
        self.json_path, self.png_dir, self.image_dir = find_layout(root)
        try:
            data = json.loads(self.json_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CvkitError(f"cannot read {self.json_path}: {e}") from None
        self.categories = data["categories"]
        self.contiguous = {c["id"]: i for i, c in enumerate(self.categories)}
        names = {im["id"]: im["file_name"] for im in data.get("images", [])}
        self.items, self.skipped = [], 0
        for ann in data["annotations"]:
            try:
                self._check_info(ann)
            except BadSample as e:
                self._skip(e)
                continue
            image_name = names.get(ann["image_id"], Path(ann["file_name"]).with_suffix(".jpg").name)
            image_path = self.image_dir / image_name
            if not image_path.exists():  # Cityscapes: leftImg8bit/<split>/<city>/<city>_..._leftImg8bit.png
                image_path = self.image_dir / image_name.split("_")[0] / image_name
            self.items.append((image_path, self.png_dir / ann["file_name"], ann))
        if not self.items:
            raise CvkitError(f"{self.json_path}: no usable samples ({self.skipped} skipped)")
        self.targets, self.flip = targets, flip
        self.sigma, self.small_area, self.small_weight = sigma, small_area, small_weight
        self.thing_classes = [i for i, c in enumerate(self.categories) if c["isthing"]]

    def _check_info(self, ann: dict) -> None:
        seen = set()
        for s in ann["segments_info"]:
            if s["id"] in seen:
                raise BadSample(f"{ann['file_name']}: segment id {s['id']} is listed twice (two annotations "
                                "claim the same pixels)")
            seen.add(s["id"])
            if s["category_id"] not in self.contiguous:
                raise BadSample(f"{ann['file_name']}: segment {s['id']} has unknown category {s['category_id']}")

    def _skip(self, e: Exception) -> None:
        self.skipped += 1
        log.warning("skipped: %s", e)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """(RGB image, (H, W) segment ids, segments_info) of item i; BadSample when inconsistent."""
        image_path, png_path, ann = self.items[i]
        image = _read_rgb(image_path)
        ids = rgb2id(_read_rgb(png_path))
        if ids.shape != image.shape[:2]:
            raise BadSample(f"{png_path.name}: panoptic PNG is {ids.shape[1]}x{ids.shape[0]}, its image "
                            f"{image.shape[1]}x{image.shape[0]}")
        listed = {s["id"] for s in ann["segments_info"]}
        present = set(np.unique(ids).tolist()) - {0}
        if present - listed:
            raise BadSample(f"{png_path.name}: ids {sorted(present - listed)[:5]} are in the PNG but not in "
                            "segments_info")
        if listed - present:
            raise BadSample(f"{png_path.name}: segments {sorted(listed - present)[:5]} are in segments_info but "
                            "not in the PNG")
        return image, ids, ann["segments_info"]

    def __getitem__(self, i: int) -> dict:
        for k in range(len(self.items)):
            try:
                image, ids, segments = self.load((i + k) % len(self.items))
                break
            except BadSample as e:
                self._skip(e)
        else:
            raise CvkitError(f"{self.json_path}: no readable sample")
        if self.flip and np.random.random() < 0.5:
            image, ids = image[:, ::-1], ids[:, ::-1]
        out = {"image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()}
        if self.targets:
            t = deeplab_targets(ids, segments, self.contiguous, self.categories, self.sigma, self.small_area,
                                self.small_weight)
            out.update({k: torch.from_numpy(v) for k, v in t.items()})
        else:
            out["gt_ids"] = torch.from_numpy(np.ascontiguousarray(ids))
            out["gt_segments"] = torch.tensor([[s["id"], s["category_id"], s.get("iscrowd", 0), s["area"]]
                                               for s in segments], dtype=torch.int64).reshape(-1, 4)
        return out


# ---------------------------------------------------------------------------------------------
# Panoptic-DeepLab targets


def deeplab_targets(ids: np.ndarray, segments: list[dict], contiguous: dict[int, int], categories: list[dict],
                    sigma: float = 8.0, small_area: int = 256, small_weight: float = 3.0) -> dict[str, np.ndarray]:
    """semantic (H, W) int64 (IGNORE on void and crowd), semantic_weights (H, W), center (1, H, W)
    Gaussian peaks (max over instances), center_weights (H, W) (0 on void / crowd), offset (2, H, W)
    = (dy, dx) to the instance centre on thing pixels, offset_weights (H, W) (1 on thing pixels)."""
    h, w = ids.shape
    semantic = np.full((h, w), IGNORE, np.int64)
    sem_w = np.ones((h, w), np.float32)
    center = np.zeros((h, w), np.float32)
    center_w = np.ones((h, w), np.float32)
    offset = np.zeros((2, h, w), np.float32)
    offset_w = np.zeros((h, w), np.float32)
    ys, xs = np.mgrid[:h, :w].astype(np.float32)
    radius = int(3 * sigma + 1)
    g = np.arange(-radius, radius + 1, dtype=np.float32)
    gauss = np.exp(-(g[:, None] ** 2 + g[None, :] ** 2) / (2 * sigma ** 2))
    for s in segments:
        mask = ids == s["id"]
        if s.get("iscrowd", 0):
            center_w[mask] = 0
            continue
        cls = contiguous[s["category_id"]]
        semantic[mask] = cls
        if not categories[cls]["isthing"]:
            continue
        area = int(mask.sum())
        if area == 0:
            continue
        if area < small_area:
            sem_w[mask] = small_weight
        cy, cx = ys[mask].mean(), xs[mask].mean()
        iy, ix = round(float(cy)), round(float(cx))
        y0, y1 = max(0, iy - radius), min(h, iy + radius + 1)
        x0, x1 = max(0, ix - radius), min(w, ix + radius + 1)
        patch = gauss[y0 - iy + radius:y1 - iy + radius, x0 - ix + radius:x1 - ix + radius]
        center[y0:y1, x0:x1] = np.maximum(center[y0:y1, x0:x1], patch)
        offset[0][mask] = cy - ys[mask]
        offset[1][mask] = cx - xs[mask]
        offset_w[mask] = 1
    center_w[ids == 0] = 0
    return {"semantic": semantic, "semantic_weights": sem_w, "center": center[None], "center_weights": center_w,
            "offset": offset, "offset_weights": offset_w}
