"""The panoptic Task: every pixel a class and, for things, an instance; COCO panoptic outputs.

A result is a dict: `ids` (H, W) int32 segment ids (0 = void, segments numbered 1..N in
ascending panoptic label) and `segments_info` (COCO panoptic: id, category_id, isthing, area, plus
bbox [x, y, w, h] and the class name). With `png_dir` set, `serialise` also writes the ids as a
COCO panoptic PNG (id = R + 256 G + 256^2 B) under it and names it in the record's `file_name`.
"""
from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from cvkit.engine.task import TASKS, Task
from cvkit.errors import UsageError
from cvkit.media.draw import put_label
from cvkit.media.sinks import write_image
from cvkit.nn import deploy
from cvkit.presets import preset_weights
from cvkit.weights import load_weights

from .metrics import id2rgb
from .models import PANOPTIC_MODELS, pad_to

#: class colours (RGB), cycled for more classes
PALETTE = np.array([(128, 64, 128), (70, 130, 70), (70, 70, 160), (190, 153, 153), (153, 120, 60),
                    (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 220, 0), (250, 170, 30),
                    (102, 102, 156), (0, 80, 100), (119, 11, 32), (160, 100, 200), (90, 90, 90)], np.uint8)


def categories_from_preset(preset: dict) -> list[dict]:
    """COCO panoptic categories of a preset: `classes` (names, or dicts with id / name / isthing)
    and `args.thing_ids` (contiguous indices of the thing classes); plain names get ids 1..K."""
    classes = preset.get("classes")
    args = preset.get("args") or {}
    num = args.get("num_classes")
    if not classes:
        if num is None:
            raise UsageError(f"preset '{preset.get('name')}' needs `classes` or `args.num_classes`")
        classes = [f"class{i}" for i in range(num)]
    if isinstance(classes, str):
        raise UsageError(f"preset '{preset.get('name')}': `classes` must be a list for the panoptic task")
    things = set(args.get("thing_ids") or ())
    cats = []
    for i, c in enumerate(classes):
        if isinstance(c, dict):
            cats.append({"id": int(c.get("id", i + 1)), "name": str(c["name"]),
                         "isthing": int(c.get("isthing", i in things))})
        else:
            cats.append({"id": i + 1, "name": str(c), "isthing": int(i in things)})
    if num is not None and num != len(cats):
        raise UsageError(f"preset '{preset.get('name')}' lists {len(cats)} classes but args.num_classes is {num}")
    return cats


def label_map_to_segments(labels: np.ndarray, categories: list[dict], label_divisor: int) -> dict:
    """(H, W) panoptic labels (class * label_divisor + instance, void < 0) -> the Task result.

    Pixel work is array-wide: each pixel's index among the sorted label values (searchsorted), and
    which rows and columns each value occupies (two bincounts) for the boxes.
    """
    labels = np.asarray(labels, np.int64)
    height, width = labels.shape
    values, counts = np.unique(labels, return_counts=True)
    index = np.searchsorted(values, labels)
    kept = values >= 0
    seg_ids = (np.cumsum(kept) * kept).astype(np.int32)  # 1..N in ascending label, 0 for void
    rows = np.bincount((index * height + np.arange(height)[:, None]).ravel(), minlength=len(values) * height)
    cols = np.bincount((index * width + np.arange(width)).ravel(), minlength=len(values) * width)
    rows, cols = rows.reshape(-1, height) > 0, cols.reshape(-1, width) > 0
    y0, y1 = rows.argmax(1), height - 1 - rows[:, ::-1].argmax(1)
    x0, x1 = cols.argmax(1), width - 1 - cols[:, ::-1].argmax(1)
    segments = []
    for k in np.flatnonzero(kept).tolist():
        cat = categories[int(values[k]) // label_divisor]
        segments.append({"id": int(seg_ids[k]), "category_id": cat["id"], "isthing": bool(cat["isthing"]),
                         "area": int(counts[k]), "bbox": [int(x0[k]), int(y0[k]), int(x1[k] - x0[k] + 1),
                                                          int(y1[k] - y0[k] + 1)], "name": cat["name"]})
    return {"ids": seg_ids[index], "segments_info": segments}


def instance_colour(seg_id: int) -> np.ndarray:
    """A saturated colour per instance (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((seg_id * 0.618034) % 1.0, 0.75, 1.0)
    return np.array([r * 255, g * 255, b * 255], np.uint8)


@TASKS.register("panoptic")
class PanopticTask(Task):
    """Panoptic segmentation with any model of PANOPTIC_MODELS (see `models.py`).

    Frames are fed at their own size, zero-padded to the model's size divisor; results are in
    original-image pixels.
    """

    name = "panoptic"
    image_ext = ".jpg"

    def __init__(self, model, preset=None, *, categories: list[dict] | None = None, alpha: float = 0.55):
        super().__init__(model, preset)
        if categories is None and not self.preset.get("classes") and hasattr(model, "default_categories"):
            categories = model.default_categories()
        self.categories = categories or categories_from_preset(self.preset)
        if len(self.categories) != model.num_classes:
            raise UsageError(f"{len(self.categories)} classes named for a model of {model.num_classes}")
        self.by_id = {c["id"]: (i, c) for i, c in enumerate(self.categories)}
        self.size_divisor = PANOPTIC_MODELS.meta(self.preset.get("model", "panoptic_deeplab")).get("size_divisor", 32)
        self.alpha = alpha
        self.png_dir: Path | None = None

    @classmethod
    def from_preset(cls, preset: dict, weights: str | None = None, **options) -> PanopticTask:
        args = dict(preset.get("args") or {})
        model = PANOPTIC_MODELS.build(preset["model"], backbone=preset.get("backbone"), **args)
        location, sha = preset_weights(preset)
        if weights is not None:
            location, sha = weights, None
        load_weights(model, location, converter=PANOPTIC_MODELS.meta(preset["model"]).get("converter"),
                     sha256=sha)
        return cls(deploy(model), preset, **options)

    # -- inference --------------------------------------------------------------------------
    def preprocess(self, frames: Sequence) -> tuple[torch.Tensor, list[dict]]:
        batch = torch.from_numpy(np.stack([f.image for f in frames])).permute(0, 3, 1, 2).float()
        metas = [{"size": f.image.shape[:2], "rel": f.meta.get("rel") or Path(f.source).name,
                  "kind": f.meta.get("kind", "image"), "index": f.index} for f in frames]
        return pad_to(batch, self.size_divisor), metas

    def postprocess(self, raw: Any, metas: list[dict]) -> list[dict]:
        maps = self.model.panoptic(raw, [m["size"] for m in metas])
        results = []
        for labels, meta in zip(maps, metas):
            res = label_map_to_segments(labels.cpu().numpy(), self.categories, self.model.label_divisor)
            res["file_name"] = self._png_name(meta)
            results.append(res)
        return results

    @staticmethod
    def _png_name(meta: dict) -> str:
        rel = Path(meta["rel"])
        if meta["kind"] == "image":
            return str(rel.with_suffix(".png"))
        return str(rel.with_suffix("") / f"{meta['index']:06d}.png")

    # -- output ------------------------------------------------------------------------------
    def render(self, frame, result: dict) -> np.ndarray:
        """Stuff in its class colour, things in one colour per instance with a white outline and
        their class name at the segment centre, and a legend of the classes present."""
        ids = result["ids"]
        colours = np.zeros((len(result["segments_info"]) + 1, 3), np.uint8)
        for s in result["segments_info"]:
            index = self.by_id[s["category_id"]][0]
            colours[s["id"]] = instance_colour(s["id"]) if s["isthing"] else PALETTE[index % len(PALETTE)]
        out = frame.image.astype(np.float32)
        paint = colours[ids].astype(np.float32)
        seen = ids > 0
        out[seen] = out[seen] * (1 - self.alpha) + paint[seen] * self.alpha
        out = out.round().astype(np.uint8)
        things = np.zeros(len(colours), bool)
        things[[s["id"] for s in result["segments_info"] if s["isthing"]]] = True
        edge = np.zeros(ids.shape, bool)
        edge[:-1] |= ids[:-1] != ids[1:]
        edge[1:] |= ids[:-1] != ids[1:]
        edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
        edge[:, 1:] |= ids[:, :-1] != ids[:, 1:]
        out[edge & things[ids]] = 255
        scale = max(0.3, ids.shape[0] / 1200)
        if things.any():  # segment centres in one pass: pixel counts and coordinate sums per id
            rows, cols = ids.shape
            flat = ids.ravel()
            count = np.bincount(flat, minlength=len(colours))
            y_sum = np.bincount(flat, weights=np.repeat(np.arange(rows), cols), minlength=len(colours))
            x_sum = np.bincount(flat, weights=np.tile(np.arange(cols), rows), minlength=len(colours))
        for s in result["segments_info"]:
            if s["isthing"]:
                n = max(count[s["id"]], 1)
                (w, h), _ = cv2.getTextSize(s["name"], cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
                put_label(out, s["name"], (int(x_sum[s["id"]] / n) - w // 2, int(y_sum[s["id"]] / n) - h // 2),
                          scale=scale)
        self._legend(out, result["segments_info"], scale)
        return out

    def _legend(self, out: np.ndarray, segments: list[dict], scale: float) -> None:
        counts: dict[int, int] = {}
        for s in segments:
            counts[s["category_id"]] = counts.get(s["category_id"], 0) + 1
        y = 4
        box = max(8, round(22 * scale))
        for cat_id in sorted(counts, key=lambda c: self.by_id[c][0]):
            index, cat = self.by_id[cat_id]
            text = f"{cat['name']} x{counts[cat_id]}" if cat["isthing"] else cat["name"]
            colour = (255, 255, 255) if cat["isthing"] else PALETTE[index % len(PALETTE)].tolist()
            cv2.rectangle(out, (4, y), (4 + box, y + box), tuple(int(c) for c in colour), -1)
            put_label(out, text, (6 + box, y), scale=scale)
            y += box + 4

    def serialise(self, result: dict) -> dict[str, Any]:
        height, width = result["ids"].shape
        if self.png_dir is not None:
            write_image(self.png_dir / result["file_name"], id2rgb(result["ids"]))
        return {"height": height, "width": width, "file_name": result["file_name"],
                "segments_info": result["segments_info"]}


__all__ = ["PanopticTask", "categories_from_preset", "label_map_to_segments"]
