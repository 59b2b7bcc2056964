"""Presets: one YAML file per preset, validated on load, overridable from the command line.

A preset is complete on its own: task, model (and backbone / neck where the task has them),
model arguments, input size, classes, weights (URL or shipped file, pinned by sha256).
"""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError
from .registry import closest, unknown_name_error

_ANY = object()
# key -> allowed types (None allowed where listed); nested dicts give their own schema.
SCHEMA: dict[str, Any] = {
    "name": (str,),
    "task": (str,),
    "description": (str,),
    "model": (str,),
    "backbone": (str, type(None)),
    "neck": (str, type(None)),
    "head": (str, type(None)),
    "args": (dict,),
    "imgsz": (int, list, type(None)),
    "classes": (list, str, type(None)),
    "weights": {"url": (str, type(None)), "path": (str, type(None)), "sha256": (str, type(None)),
                "converter": (str, type(None)), "trained_by": (str, type(None))},
    "train": (dict,),
    "eval": (dict,),
}
REQUIRED = ("name", "task", "model")


def _preset_dir():
    return resources.files("cvkit._presets")


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in _preset_dir().iterdir() if p.name.endswith(".yaml"))


def _typename(types) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def validate(data: Any, source: str) -> dict:
    """Check a preset against SCHEMA: unknown keys (with the closest valid one), wrong types and
    missing required keys are UsageErrors naming the key."""
    if not isinstance(data, dict):
        raise UsageError(f"preset {source} must be a mapping of keys, not {type(data).__name__}")

    def check(node: dict, schema: dict, prefix: str):
        for key, value in node.items():
            full = f"{prefix}{key}"
            if key not in schema:
                hint = closest(str(key), schema)
                raise UsageError(f"preset {source}: unknown key '{full}'"
                                 + (f" (did you mean '{prefix}{hint}'?)" if hint else "")
                                 + f"; valid: {', '.join(prefix + k for k in schema)}")
            rule = schema[key]
            if isinstance(rule, dict):
                if value is None:
                    continue
                if not isinstance(value, dict):
                    raise UsageError(f"preset {source}: '{full}' must be a mapping or null, "
                                     f"not {type(value).__name__}")
                check(value, rule, full + ".")
            elif not isinstance(value, rule) or (isinstance(value, bool) and bool not in rule):
                raise UsageError(f"preset {source}: '{full}' must be {_typename(rule)}, "
                                 f"not {type(value).__name__} ({value!r})")

    check(data, SCHEMA, "")
    for key in REQUIRED:
        if key not in data:
            raise UsageError(f"preset {source}: missing required key '{key}'")
    out = {k: None for k in SCHEMA}
    out.update(args={}, train={}, eval={})
    out.update(copy.deepcopy(data))
    return out


def _read_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"preset {source} is not valid YAML ({problem}{where})") from None


def load_preset(name_or_path: str | Path, overrides: list[str] | None = None, *,
                task: str | None = None) -> dict:
    """A validated preset by name (shipped with cvkit) or by path to a YAML file, with
    `key.sub=value` overrides applied. `task` checks the preset belongs to that task."""
    spec = str(name_or_path)
    path = Path(spec).expanduser()
    if spec.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise UsageError(f"preset file not found: {spec}")
        data, source = _read_yaml(path.read_text(), str(path)), str(path)
        base = path.parent
    else:
        names = preset_names()
        if spec not in names:
            raise unknown_name_error("preset", spec, names)
        data = _read_yaml((_preset_dir() / f"{spec}.yaml").read_text(), spec)
        source, base = spec, None
    preset = validate(data, source)
    for item in overrides or []:
        apply_override(preset, item)
    preset = validate({k: v for k, v in preset.items() if v not in (None, {}) or k in REQUIRED},
                      source)
    if task and preset["task"] != task:
        raise UsageError(f"preset '{preset['name']}' is for task '{preset['task']}', not '{task}'")
    w = preset.get("weights") or {}
    if w.get("path") and base is not None and not Path(w["path"]).is_absolute():
        w["path"] = str((base / w["path"]).resolve())
    return preset


def apply_override(preset: dict, item: str) -> None:
    """Apply one `a.b.c=value` override (value parsed as YAML: numbers, lists, null...)."""
    if "=" not in item:
        raise UsageError(f"--set expects key=value, got '{item}'")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise UsageError(f"--set: bad key '{key}'")
    value = _read_yaml(raw, f"--set {key}") if raw.strip() else None
    node = preset
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise UsageError(f"--set {key}: '{p}' is not a mapping")
        node = node[p]
    node[parts[-1]] = value


def preset_weights(preset: dict) -> tuple[str | None, str | None]:
    """(location, sha256) of a preset's weights: a shipped file (paths relative to cvkit's
    assets), a URL, or (None, None) when the preset has none."""
    w = preset.get("weights") or {}
    if w.get("path"):
        p = Path(w["path"])
        if not p.is_absolute():
            p = Path(str(resources.files("cvkit") / "assets" / p))
        return str(p), w.get("sha256")
    if w.get("url"):
        return w["url"], w.get("sha256")
    return None, None


def dump(preset: dict) -> str:
    """YAML text of a preset, without empty fields."""
    clean = {k: v for k, v in preset.items() if v not in (None, {}, [])}
    return yaml.safe_dump(clean, sort_keys=False)
