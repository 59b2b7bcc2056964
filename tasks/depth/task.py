"""The depth Task: frames in, HxW float32 depth in metres out, at each frame's own size.

Each frame is resized to the preset's input size (`imgsz`) and normalised as the preset says; the
prediction is resized back to the frame (bilinear). Rendering is the Turbo colour map (near =
warm) with a legend in metres, optionally beside the input. With `save_raw` every depth map is
also written next to the rendered outputs, mirroring the input tree: ``<name>_depth.png`` (16-bit,
millimetres, 0 = no depth, the NYU / TUM convention; depths beyond 65.535 m are clipped) or
``<name>_depth.npy`` (float32 metres); video frames go to ``<name>_depth/<frame:06d>.<ext>``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from cvkit.engine.task import TASKS, Task
from cvkit.errors import CvkitError, UsageError
from cvkit.nn import deploy

from .models import build_depth_model, input_size, normalisation
from .render import render_depth

RAW_FORMATS = ("png", "npy")


def depth_to_mm(depth: np.ndarray) -> np.ndarray:
    """Metres -> uint16 millimetres (rounded, clipped to 0..65535)."""
    return np.clip(np.nan_to_num(depth) * 1000.0, 0, 65535).round().astype(np.uint16)


def write_raw(path: Path, depth: np.ndarray) -> None:
    """Save depth in metres as 16-bit PNG millimetres or float32 .npy metres, by the suffix of
    `path`, atomically."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, depth.astype(np.float32))
        else:
            ok, buf = cv2.imencode(".png", depth_to_mm(depth))
            if not ok:
                raise CvkitError(f"cannot encode {path.name} as 16-bit PNG")
            tmp.write_bytes(buf.tobytes())
        os.replace(tmp, path)
    except OSError as e:
        raise CvkitError(f"cannot write to {path}: {e.strerror or e}") from None


def raw_path(raw_dir: Path, meta: dict, ext: str) -> Path:
    """Where a frame's raw depth goes under `raw_dir` (see the module docstring)."""
    rel = Path(meta.get("rel") or Path(meta["source"]).name)
    if meta.get("kind", "image") == "image":
        return raw_dir / rel.with_name(f"{rel.stem}_depth{ext}")
    return raw_dir / rel.with_name(f"{rel.stem}_depth") / f"{meta['index']:06d}{ext}"


@TASKS.register("depth")
class DepthTask(Task):
    """Monocular depth in metres. Options: `save_raw` + `raw_dir` (+ `raw_format` "png" or
    "npy"), `side_by_side` (input and colour map in one image), `value_range` (near, far) metres
    for a colour scale that does not change from frame to frame (default: each frame's 2nd-98th
    percentile)."""

    name = "depth"
    image_ext = ".png"

    def __init__(self, model, preset=None, *, save_raw: bool = False, raw_format: str = "png",
                 raw_dir: str | os.PathLike | None = None, side_by_side: bool = False,
                 value_range: tuple[float, float] | None = None):
        super().__init__(model, preset)
        if raw_format not in RAW_FORMATS:
            raise UsageError(f"--raw-format must be one of {', '.join(RAW_FORMATS)}; got '{raw_format}'")
        if save_raw and raw_dir is None:
            raise UsageError("save_raw needs raw_dir, the folder to write depth maps to")
        if value_range is not None and not 0 <= value_range[0] < value_range[1]:
            raise UsageError(f"--range needs 0 <= near < far, got {value_range[0]} {value_range[1]}")
        self.raw_dir = Path(raw_dir) if save_raw else None
        self.raw_ext = f".{raw_format}"
        self.side_by_side = side_by_side
        self.value_range = value_range
        self.size = input_size(self.preset)
        self.mean, self.std = normalisation(self.preset)

    @classmethod
    def from_preset(cls, preset: dict, weights: str | None = None, **options) -> DepthTask:
        return cls(deploy(build_depth_model(preset, weights)), preset, **options)

    # -- inference --------------------------------------------------------------------------
    def preprocess(self, frames: Sequence) -> tuple[torch.Tensor, list[dict]]:
        images = []
        for f in frames:
            img = f.image
            if self.size is not None and img.shape[:2] != self.size:
                h, w = self.size
                shrink = h < img.shape[0] and w < img.shape[1]
                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            images.append(img)
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
        batch = (batch - self.mean) / self.std
        metas = [{"size": f.image.shape[:2], "source": f.source, "index": f.index,
                  "rel": f.meta.get("rel"), "kind": f.meta.get("kind", "image")} for f in frames]
        return batch, metas

    def postprocess(self, raw: torch.Tensor, metas: list[dict]) -> list[np.ndarray]:
        results = []
        for depth, meta in zip(raw.detach().float(), metas):
            if tuple(depth.shape[-2:]) != tuple(meta["size"]):
                depth = F.interpolate(depth[None], size=tuple(meta["size"]), mode="bilinear",
                                      align_corners=False)[0]
            d = np.ascontiguousarray(depth[0].numpy(), dtype=np.float32)
            if self.raw_dir is not None:
                write_raw(raw_path(self.raw_dir, meta, self.raw_ext), d)
            results.append(d)
        return results

    # -- output ------------------------------------------------------------------------------
    def render(self, frame, result: np.ndarray) -> np.ndarray:
        view = render_depth(result, self.value_range)
        return np.concatenate([frame.image, view], axis=1) if self.side_by_side else view

    def serialise(self, result: np.ndarray) -> dict[str, Any]:
        valid = result[result > 0]
        stats = (valid.min(), np.median(valid), valid.max()) if valid.size else (0.0, 0.0, 0.0)
        return {"height": int(result.shape[0]), "width": int(result.shape[1]),
                **{k: round(float(v), 4) for k, v in zip(("min_m", "median_m", "max_m"), stats)}}


__all__ = ["DepthTask", "depth_to_mm", "write_raw"]
