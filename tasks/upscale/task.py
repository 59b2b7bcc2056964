"""The upscale Task: any SR model of SR_MODELS through the media pipeline, whole or tiled."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvkit.engine.task import TASKS, Task
from cvkit.errors import CvkitError, UsageError
from cvkit.nn import deploy
from cvkit.presets import preset_weights
from cvkit.weights import load_weights

from .models import SR_MODELS, upscale_rgb


def checkpoint_meta(path: str | Path) -> dict:
    """cvkit's own training metadata stored in a .safetensors header ({} when absent)."""
    if not str(path).endswith(".safetensors"):
        return {}
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - unreadable files are reported by load_weights
        return {}
    raw = meta.get("cvkit")
    return json.loads(raw) if raw else {}


@TASKS.register("upscale")
class UpscaleTask(Task):
    """Super-resolution: frames in, `scale`-times larger RGB uint8 frames out.

    `tile`/`tile_overlap` (input pixels) bound memory: each tile is upscaled with `tile_overlap`
    pixels of context on every side and only its centre is kept, so the seams vanish once the
    overlap covers the model's receptive field.
    """

    name = "upscale"
    image_ext = ".png"

    def __init__(self, model, preset=None, *, tile: int | None = None, tile_overlap: int = 16):
        super().__init__(model, preset)
        self.scale = model.scale
        if tile is not None:
            if tile <= 0 or tile_overlap < 0:
                raise UsageError("--tile must be positive and --tile-overlap non-negative")
            if tile <= tile_overlap:
                raise UsageError(f"--tile {tile} must be larger than --tile-overlap {tile_overlap}")
            if int(self.scale) != self.scale:
                raise UsageError(f"tiling needs an integer scale; this model upscales x{self.scale}")
        self.tile, self.tile_overlap = tile, tile_overlap
        self.min_size = getattr(model, "min_input_size", 1)

    @classmethod
    def from_preset(cls, preset: dict, weights: str | None = None, *, scale: float | None = None,
                    tile: int | None = None, tile_overlap: int = 16) -> UpscaleTask:
        args = dict(preset.get("args") or {})
        if scale is not None and scale != args.get("scale"):
            if preset["model"] != "bicubic":
                raise UsageError(f"preset '{preset['name']}' upscales x{args.get('scale')}; --scale {scale:g} "
                                 f"is not supported (pick a preset for x{scale:g})")
            args["scale"] = scale
        model = SR_MODELS.build(preset["model"], **args)
        location, sha = preset_weights(preset)
        if weights is not None:
            location, sha = weights, None
        if location is not None and str(location).lower() != "none":
            trained = checkpoint_meta(location)
            if trained.get("scale") not in (None, model.scale):
                raise CvkitError(f"{location} was trained for x{trained['scale']}, but the model "
                                 f"upscales x{model.scale}")
            load_weights(model, location, converter=SR_MODELS.meta(preset["model"]).get("converter"),
                         sha256=sha)
        elif preset["model"] != "bicubic":
            load_weights(model, "none")
        # channels_last: luma models get an NCHW plane, which would otherwise take the slower NCHW
        # kernels (RGB models already get channels_last batches from preprocess).
        return cls(deploy(model).to(memory_format=torch.channels_last), preset, tile=tile,
                   tile_overlap=tile_overlap)

    # -- inference --------------------------------------------------------------------------
    def preprocess(self, frames: Sequence) -> tuple[torch.Tensor, list[dict]]:
        for f in frames:
            h, w = f.image.shape[:2]
            if min(h, w) < self.min_size:
                raise CvkitError(f"{f.source}: image {w}x{h} is smaller than the {self.min_size}x"
                                 f"{self.min_size} this model needs")
        batch = torch.from_numpy(np.stack([f.image for f in frames])).permute(0, 3, 1, 2)
        return batch.float().div_(255.0), [{"size": f.image.shape[:2]} for f in frames]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.tile is None or max(batch.shape[-2:]) <= self.tile:
            return _to_uint8(upscale_rgb(self.model, batch))
        return self._tiled(batch)

    def _tiled(self, batch: torch.Tensor) -> torch.Tensor:
        """Upscale tile by tile into a uint8 canvas; memory ~ the tile plus the output."""
        n, _, h, w = batch.shape
        s, t, o = int(self.scale), self.tile, self.tile_overlap
        out = torch.empty(n, 3, h * s, w * s, dtype=torch.uint8)
        for y0 in range(0, h, t):
            for x0 in range(0, w, t):
                y1, x1 = min(y0 + t, h), min(x0 + t, w)
                ya, xa = max(y0 - o, 0), max(x0 - o, 0)
                yb, xb = min(y1 + o, h), min(x1 + o, w)
                up = upscale_rgb(self.model, batch[:, :, ya:yb, xa:xb])
                out[:, :, y0 * s:y1 * s, x0 * s:x1 * s] = _to_uint8(
                    up[:, :, (y0 - ya) * s:(y1 - ya) * s, (x0 - xa) * s:(x1 - xa) * s])
        return out

    def postprocess(self, raw: torch.Tensor, metas: list[dict]) -> list[np.ndarray]:
        return [np.ascontiguousarray(img.permute(1, 2, 0).numpy()) for img in raw]

    # -- output ------------------------------------------------------------------------------
    def render(self, frame, result: np.ndarray) -> np.ndarray:
        return result

    def serialise(self, result: np.ndarray) -> dict[str, Any]:
        return {"height": int(result.shape[0]), "width": int(result.shape[1]), "scale": self.scale}


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.float().mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


__all__ = ["UpscaleTask"]
