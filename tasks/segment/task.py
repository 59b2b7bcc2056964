"""The segment Task: any model of SEG_MODELS through the media pipeline, whole-image or sliding-window.

Results are HxW label maps (uint8, or int32 past 256 classes) in original-image pixels. `render` blends
the class colours over the frame (opacity 0.5) with a legend of the classes present, largest first;
`serialise` gives each present class's share of the pixels. With `label_dir`, `render` also writes a
palette-indexed label PNG per frame there (stills: the input's relative path with .png; video frames:
<rel path>/<frame index>.png), never over an existing file.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from cvkit.engine.task import TASKS, Task
from cvkit.errors import CvkitError, UsageError
from cvkit.nn import deploy
from cvkit.presets import preset_weights

from .build import SEG_MODELS, build_model, is_skip, load_segment_weights, num_classes_of, read_meta
from .datasets_meta import ClassSet, class_set
from .inference import check_slide, slide_labels, whole_labels

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
MODES = ("whole", "slide")


def normalise(images: torch.Tensor) -> torch.Tensor:
    """NCHW uint8 RGB -> float normalised with the ImageNet mean and std (torchvision's and mmseg's)."""
    return (images.float() - MEAN) / STD


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def resolve_spec(preset: dict, weights: str | None = None, *, backbone: str | None = None,
                 output_stride: int | None = None, num_classes: int | None = None) -> tuple[dict, str | None, str | None]:
    """(model spec {model, backbone, args, classes}, weights location, sha256) for a preset and the
    command-line choices. A cvkit-trained weights file brings its own spec. A new backbone drops the
    preset's weights (they are for another network)."""
    location, sha = preset_weights(preset)
    if weights is not None:
        location, sha = weights, None
    spec = {"model": preset["model"], "backbone": preset.get("backbone"), "args": dict(preset.get("args") or {}),
            "classes": preset.get("classes")}
    meta = read_meta(location) if location and str(location).lower() != "none" else {}
    if meta:
        spec = {k: meta.get(k) for k in ("model", "backbone", "args", "classes")}
    SEG_MODELS.canonical(spec["model"])  # unknown model names fail here, with the closest match
    if backbone is not None:
        if not is_skip(spec["model"]):
            raise UsageError(f"--backbone applies to fcn8s/fcn16s/fcn32s; '{spec['model']}' has its own backbone")
        if backbone != spec.get("backbone") and weights is None:
            location, sha = None, None
        spec["backbone"] = backbone
    if output_stride is not None:
        if output_stride not in (8, 16, 32):
            raise UsageError(f"--output-stride must be 8, 16 or 32; got {output_stride}")
        spec["args"]["output_stride"] = output_stride
    if num_classes is not None:
        if num_classes < 1:
            raise UsageError(f"--num-classes must be positive; got {num_classes}")
        spec["args"]["num_classes"] = num_classes
    return spec, location, sha


def classes_for(spec: dict, n: int) -> ClassSet:
    """The ClassSet of a spec's `classes` when it has `n` classes, else generic names."""
    try:
        return class_set(spec.get("classes"), n)
    except UsageError:
        return class_set(None, n)


@TASKS.register("segment")
class SegmentTask(Task):
    """Semantic segmentation: frames in, HxW label maps out (module docstring)."""

    name = "segment"

    def __init__(self, model, preset=None, *, classes: ClassSet | None = None, mode: str = "whole",
                 crop: int | Sequence[int] = 512, stride: int | Sequence[int] = 341,
                 label_dir: str | os.PathLike | None = None, opacity: float = 0.5):
        super().__init__(model, preset)
        if mode not in MODES:
            raise UsageError(f"--mode must be one of {', '.join(MODES)}; got '{mode}'")
        self.mode, self.crop, self.stride = mode, _pair(crop), _pair(stride)
        if mode == "slide":
            check_slide(self.crop, self.stride)
        self.classes = classes or class_set(None, num_classes_of(model))
        self.label_dir = Path(label_dir) if label_dir is not None else None
        self.opacity = opacity
        colours = np.zeros((max(256, self.classes.num_classes), 3), np.uint8)
        colours[:self.classes.num_classes] = self.classes.palette
        self._colours = colours

    @classmethod
    def from_preset(cls, preset: dict, weights: str | None = None, *, backbone: str | None = None,
                    output_stride: int | None = None, num_classes: int | None = None, mode: str = "whole",
                    crop: int | Sequence[int] = 512, stride: int | Sequence[int] = 341,
                    label_dir: str | os.PathLike | None = None) -> SegmentTask:
        if mode not in MODES:
            raise UsageError(f"--mode must be one of {', '.join(MODES)}; got '{mode}'")
        if mode == "slide":
            check_slide(_pair(crop), _pair(stride))
        spec, location, sha = resolve_spec(preset, weights, backbone=backbone, output_stride=output_stride,
                                           num_classes=num_classes)
        model = build_model(spec)
        if location is not None and str(location).lower() != "none":
            converter = None if read_meta(location) else SEG_MODELS.meta(spec["model"]).get("converter")
            load_segment_weights(model, location, converter=converter, sha256=sha,
                                 reinit_classifier=num_classes is not None)
        else:
            from cvkit.weights import load_weights
            load_weights(model, "none")
        classes = classes_for(spec, num_classes_of(model))
        return cls(deploy(model), preset, classes=classes, mode=mode, crop=crop, stride=stride, label_dir=label_dir)

    # -- inference --------------------------------------------------------------------------
    def preprocess(self, frames: Sequence) -> tuple[torch.Tensor, list[dict]]:
        batch = torch.from_numpy(np.stack([f.image for f in frames])).permute(0, 3, 1, 2)
        return normalise(batch), [{"size": f.image.shape[:2]} for f in frames]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.mode == "slide":
            return slide_labels(self.model, batch, self.crop, self.stride)
        return whole_labels(self.model, batch)

    def postprocess(self, raw: torch.Tensor, metas: list[dict]) -> list[np.ndarray]:
        dtype = np.uint8 if self.classes.num_classes <= 256 else np.int32
        return [np.ascontiguousarray(r.numpy().astype(dtype)) for r in raw]

    # -- output ------------------------------------------------------------------------------
    def shares(self, labels: np.ndarray) -> list[tuple[int, float]]:
        """(class, share of pixels) for the classes present, largest first."""
        counts = np.bincount(labels.reshape(-1), minlength=self.classes.num_classes)
        order = np.argsort(-counts, kind="stable")
        return [(int(c), counts[c] / labels.size) for c in order if counts[c] > 0]

    def render(self, frame, result: np.ndarray) -> np.ndarray:
        if self.label_dir is not None:
            self.save_labels(frame, result)
        out = cv2.addWeighted(frame.image, 1 - self.opacity, self._colours[result], self.opacity, 0)
        return self._legend(out, self.shares(result))

    def _legend(self, image: np.ndarray, shares: list[tuple[int, float]]) -> np.ndarray:
        scale = max(0.35, min(image.shape[:2]) / 900)
        thick = max(1, round(scale * 1.5))
        line = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][1] + max(4, round(8 * scale))
        texts = [f"{self.classes.classes[c]} {100 * s:.0f}%" for c, s in shares]
        width = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] for t in texts) + line + 12
        height = line * len(texts) + 6
        x0, y0 = 4, 4
        cv2.rectangle(image, (x0, y0), (x0 + width, y0 + height), (0, 0, 0), -1)
        for i, ((c, _), text) in enumerate(zip(shares, texts)):
            y = y0 + 3 + i * line
            colour = tuple(int(v) for v in self._colours[c])
            cv2.rectangle(image, (x0 + 4, y + 2), (x0 + line - 2, y + line - 2), colour, -1)
            cv2.rectangle(image, (x0 + 4, y + 2), (x0 + line - 2, y + line - 2), (200, 200, 200), 1)
            cv2.putText(image, text, (x0 + line + 4, y + line - 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                        (255, 255, 255), thick, cv2.LINE_AA)
        return image

    def save_labels(self, frame, labels: np.ndarray) -> Path:
        """Write `labels` as a palette PNG under `label_dir` (module docstring); atomic."""
        rel = Path(frame.meta.get("rel") or Path(frame.source).name)
        if frame.meta.get("kind", "image") == "image":
            path = self.label_dir / rel.with_suffix(".png")
        else:
            path = self.label_dir / rel.with_suffix("") / f"{frame.index:06d}.png"
        if path.exists():
            raise CvkitError(f"refusing to overwrite {path} (label PNGs of an earlier run or a dataset); "
                             "choose an empty --out")
        path.parent.mkdir(parents=True, exist_ok=True)
        if labels.dtype == np.uint8:
            png = Image.fromarray(labels, mode="P")
            png.putpalette(self.classes.png_palette())
        else:
            png = Image.fromarray(labels.astype(np.uint16))
        tmp = path.with_name(f".{path.name}.part")
        png.save(tmp, format="PNG")
        os.replace(tmp, path)
        return path

    def serialise(self, result: np.ndarray) -> dict[str, Any]:
        return {"height": int(result.shape[0]), "width": int(result.shape[1]),
                "classes": {self.classes.classes[c]: round(float(s), 5) for c, s in self.shares(result)}}


__all__ = ["SegmentTask", "normalise", "resolve_spec"]
