"""Depth models from presets, and cvkit's depth weight files.

A preset names `model: fastdepth` and a `backbone`. On `mobilenet_v1` (FastDepth's own encoder)
the encoder and decoder widths are read from the checkpoint, so the official unpruned and
NetAdapt-pruned releases and cvkit's reduced-width models all load from one preset shape; `args`
(`encoder_widths`, `decoder_widths`) size a model built without weights (training from
scratch). On any other backbone `args` give `out_indices` and `decoder_widths`.

Preset `args` also hold the input normalisation, `mean` and `std` of RGB in [0, 1] (default 0
and 1: FastDepth feeds RGB / 255), which the model builder does not see.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from cvkit.backbones import create_backbone
from cvkit.errors import UsageError
from cvkit.presets import preset_weights
from cvkit.weights import load_file, load_weights, resolve, unwrap

from .fastdepth import DECODER_WIDTHS, FastDepth, fastdepth_from_state_dict, fastdepth_mobilenet

NORM_KEYS = ("mean", "std")


def normalisation(preset: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as 1x3x1x1 tensors for RGB in [0, 1]."""
    args = preset.get("args") or {}
    mean = torch.tensor(args.get("mean", (0.0, 0.0, 0.0)), dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(args.get("std", (1.0, 1.0, 1.0)), dtype=torch.float32).view(1, 3, 1, 1)
    return mean, std


def input_size(preset: dict) -> tuple[int, int] | None:
    """The model's input (height, width) from `imgsz` (an int is square); None = the source size."""
    size = preset.get("imgsz")
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if min(h, w) < 1:
        raise UsageError(f"preset '{preset.get('name')}': imgsz must be positive, got {size}")
    return int(h), int(w)


def build_depth_model(preset: dict, weights: str | None = None) -> nn.Module:
    """The preset's depth network with `weights` (path, URL, 'none'; None = the preset's own)
    loaded strictly; in train mode as built."""
    if preset["model"] != "fastdepth":
        raise UsageError(f"preset '{preset['name']}': unknown depth model '{preset['model']}'; valid: fastdepth")
    args = {k: v for k, v in (preset.get("args") or {}).items() if k not in NORM_KEYS}
    location, sha = preset_weights(preset)
    if weights is not None:
        location, sha = weights, None
    backbone = preset.get("backbone") or "mobilenet_v1"
    if backbone == "mobilenet_v1":
        unknown = set(args) - {"encoder_widths", "decoder_widths"}
        if unknown:
            raise UsageError(f"preset '{preset['name']}': unknown FastDepth args {sorted(unknown)}")
        if location is None or str(location).lower() == "none":
            model = fastdepth_mobilenet(args.get("encoder_widths"), args.get("decoder_widths", DECODER_WIDTHS))
            return load_weights(model, "none")
        return fastdepth_from_state_dict(unwrap(load_file(resolve(location, sha))))
    unknown = set(args) - {"out_indices", "decoder_widths"}
    if unknown:
        raise UsageError(f"preset '{preset['name']}': unknown FastDepth args {sorted(unknown)}")
    encoder = create_backbone(backbone, out_indices=args.get("out_indices"))
    model = FastDepth(encoder, args.get("decoder_widths", DECODER_WIDTHS))
    converter = (preset.get("weights") or {}).get("converter")
    return load_weights(model, location, converter=converter, sha256=sha)


def save_weights(model: nn.Module, path: str | Path, preset: dict, extra: dict | None = None) -> Path:
    """Write `model`'s state_dict as safetensors with JSON metadata under "cvkit" (task, model,
    backbone, args and `extra`), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"task": "depth", "model": preset["model"], "backbone": preset.get("backbone"),
            "args": preset.get("args") or {}, "imgsz": preset.get("imgsz"), **(extra or {})}
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(sd, str(tmp), metadata={"cvkit": json.dumps(meta)})
    os.chmod(tmp, 0o644)  # safetensors creates files readable by the owner only
    os.replace(tmp, path)
    return path


__all__ = ["build_depth_model", "input_size", "normalisation", "save_weights"]
