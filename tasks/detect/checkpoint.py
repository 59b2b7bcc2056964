"""Detector weights: loading any supported checkpoint with a class-count check, and cvkit's own
weight files (.safetensors whose "cvkit" metadata holds the preset fields and the class names, so
a trained model runs with `--weights FILE` alone)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from cvkit.errors import CvkitError
from cvkit.weights import load_state_dict_strict, read_state_dict

from .build import num_classes_in

MODEL_KEYS = ("model", "backbone", "neck", "head", "args", "imgsz")


def checkpoint_meta(location: str | None) -> dict:
    """The "cvkit" metadata of a detect weights file ({} for other files, URLs and 'none')."""
    if not location or not str(location).endswith(".safetensors") or not Path(location).is_file():
        return {}
    try:
        with safe_open(str(location), "pt") as f:
            raw = (f.metadata() or {}).get("cvkit")
        meta = json.loads(raw) if raw else {}
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) and meta.get("task") == "detect" else {}


def load_detector_weights(
    model: nn.Module, location: str, converter: str | None = None, sha256: str | None = None
) -> None:
    """Resolve, read safely, convert and load strictly; a checkpoint made for another number of
    classes is refused in one line before loading."""
    path, sd = read_state_dict(location, converter, sha256)
    found = num_classes_in(sd, model)
    if found is not None and found != model.num_classes:
        raise CvkitError(f"checkpoint {Path(path).name} has {found} classes, model has {model.num_classes}")
    load_state_dict_strict(model, sd, str(path))


def save_weights(
    model: nn.Module,
    path: str | Path,
    *,
    preset: dict,
    classes: list[str],
    category_ids: list[int] | None = None,
    half: bool = False,
) -> Path:
    """The model's state_dict as safetensors (float16 with `half`) with metadata: task, the preset's
    model fields, class names and dataset category ids; atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "task": "detect",
        "preset": {k: preset.get(k) for k in MODEL_KEYS if preset.get(k) is not None},
        "classes": list(classes),
        "category_ids": list(category_ids or range(1, len(classes) + 1)),
    }
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        sd[k] = v.half() if half and v.is_floating_point() else v
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(sd, str(tmp), metadata={"cvkit": json.dumps(meta)})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
