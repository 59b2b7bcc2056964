"""A synthetic detection dataset of drawn shapes (rectangles, ellipses, triangles), COCO format.

Each image has a random two-colour gradient background with noise and 1..`max_objects` filled
shapes of random colours and sizes that overlap little (IoU < 0.2); boxes are exact (axis-aligned
rectangles and ellipses, triangles whose corners touch their box). Used by the learning-proof
test, the training benchmark and the shipped `retinanet_shapes` weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

SHAPES = ("rectangle", "ellipse", "triangle")


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def draw_shapes(
    rng: np.random.Generator,
    size: tuple[int, int],
    max_objects: int = 4,
    min_side: int = 12,
    max_side: int | None = None,
) -> tuple[np.ndarray, list[tuple[list[float], int]]]:
    """One RGB uint8 image (H, W) and its [(box x1y1x2y2, class index)]."""
    h, w = size
    max_side = max_side or min(h, w) // 2
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    img = (c0 * (1 - t) + c1 * t).repeat(h, 0) + rng.normal(0, 8, (h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    objects: list[tuple[list[float], int]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _ in range(20):
            bw, bh = rng.integers(min_side, max_side + 1, 2)
            x1, y1 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            box = [x1, y1, x1 + int(bw), y1 + int(bh)]
            if all(_iou(box, b) < 0.2 for b, _ in objects):
                break
        else:
            continue
        cls = int(rng.integers(len(SHAPES)))
        bg = img[box[1] : box[3], box[0] : box[2]].reshape(-1, 3).mean(0)
        color = rng.integers(0, 256, 3)
        while np.abs(color - bg).sum() < 150:
            color = rng.integers(0, 256, 3)
        color = tuple(int(c) for c in color)
        x1, y1, x2, y2 = box
        if SHAPES[cls] == "rectangle":
            cv2.rectangle(img, (x1, y1), (x2 - 1, y2 - 1), color, -1)
        elif SHAPES[cls] == "ellipse":
            cv2.ellipse(
                img, (((x1 + x2 - 1) / 2, (y1 + y2 - 1) / 2), (x2 - x1 - 1, y2 - y1 - 1), 0), color, -1
            )
        else:
            apex = int(rng.integers(x1, x2))
            cv2.fillPoly(img, [np.array([[x1, y2 - 1], [x2 - 1, y2 - 1], [apex, y1]], np.int32)], color)
        objects.append(([float(v) for v in box], cls))
    return img, objects


def make_shapes_dataset(
    out_dir: str | Path,
    num_images: int,
    *,
    size: int | tuple[int, int] = 128,
    max_objects: int = 4,
    seed: int = 0,
) -> Path:
    """Write `num_images` JPEGs to `out_dir/images/` and `out_dir/annotations.json` (COCO, category
    ids 1..3 = rectangle, ellipse, triangle); returns the annotations path."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(num_images):
        img, objects = draw_shapes(rng, (h, w), max_objects)
        name = f"{i + 1:06d}.jpg"
        cv2.imwrite(
            str(out_dir / "images" / name),
            cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, 95],
        )
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for (x1, y1, x2, y2), cls in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cls + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(SHAPES)]
    path = out_dir / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
