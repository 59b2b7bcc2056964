"""What the backbone zoo holds: names, aliases, size, cost and outputs, for `cvkit backbones`."""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile

import torch

from .backbones import BACKBONES, backbone_names
from .engine.task import TASK_NAMES
from .errors import UsageError
from .nn import count_gflops, count_params
from .registry import unknown_name_error
from .weights import cache_dir

# The strides a task's heads read from a backbone (None: the task takes no backbone).
TASK_STRIDES = {"detect": {8, 16, 32}, "segment": {8, 16, 32}, "panoptic": {4, 8, 16},
                "depth": set(), "lanes": set(), "upscale": None}


def _source_hash(name: str) -> str:
    module = inspect.getmodule(BACKBONES.get(name))
    src = inspect.getsource(module) if module else name
    return hashlib.sha256(src.encode()).hexdigest()[:16]


def measure(name: str, size=(224, 224)) -> dict:
    """Params, GFLOPs (multiply-adds) at `size` and the FeatureSpec of backbone `name`'s dense
    form; built on the meta device where the family allows it, so nothing is computed."""
    builder = BACKBONES.get(name)
    try:
        with torch.device("meta"):
            model = builder()
            gflops = count_gflops(model, size)
    except Exception:  # noqa: BLE001 - a family whose init needs real tensors: count on the CPU
        model = builder()
        gflops = count_gflops(model, size)
    spec = model.feature_spec
    return {"params": count_params(model), "gflops": gflops,
            "channels": list(spec.channels), "strides": list(spec.strides)}


def backbone_table(task: str | None = None, refresh: bool = False) -> list[list]:
    """Rows of the zoo table; measurements are cached in $CVKIT_HOME keyed by the family source."""
    if task is not None and task not in TASK_STRIDES:
        raise unknown_name_error("task", task, TASK_NAMES)
    if task is not None and TASK_STRIDES[task] is None:
        raise UsageError(f"task '{task}' takes no backbone (its presets name whole models)")
    cache_file = cache_dir() / "backbones.json"
    try:
        cache = json.loads(cache_file.read_text()) if cache_file.is_file() and not refresh else {}
    except (OSError, ValueError):
        cache = {}
    rows, dirty = [], False
    names = backbone_names()
    from tqdm import tqdm
    todo = [n for n in names if (cache.get(n) or {}).get("hash") != _source_hash(n)]
    for name in tqdm(names, desc="measuring backbones", leave=False, disable=len(todo) < 3):
        key = _source_hash(name)
        entry = cache.get(name)
        if not entry or entry.get("hash") != key:
            entry = dict(measure(name), hash=key)
            cache[name], dirty = entry, True
        if task and not TASK_STRIDES[task] <= set(entry["strides"]):
            continue
        meta = BACKBONES.meta(name)
        aliases = meta.get("aliases", ())
        shown = ",".join(aliases[:2]) + (f" (+{len(aliases) - 2})" if len(aliases) > 2 else "")
        rows.append([name, shown or "-", f"{entry['params'] / 1e6:.2f}",
                     f"{entry['gflops']:.2f}", "/".join(map(str, entry["channels"])),
                     "/".join(map(str, entry["strides"])), "yes" if meta.get("url") else "-"])
    if dirty:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache_file.parent, suffix=".part")
            with os.fdopen(fd, "w") as f:
                json.dump(cache, f)
            os.replace(tmp, cache_file)
        except OSError:
            pass  # an unwritable cache only costs a recount next time
    return rows
