"""Building segmentation models from presets, loading their weights, and cvkit's own weight files.

- `build_model(spec)`: a model of SEG_MODELS from a spec dict {model, backbone, args} (a preset's keys);
  the FCN-32s/16s/8s skip nets take any zoo backbone, the torchvision and mmseg forms have their own.
- `load_segment_weights`: a checkpoint (path or URL, official layouts through the model's converter)
  loaded strictly; a checkpoint for another class count is refused in one line, or, when the class
  count was chosen on purpose (`--num-classes`), loaded with the classifier re-initialised (warning).
- `save_weights` / `read_meta`: cvkit-trained weights are .safetensors with JSON metadata under "cvkit"
  ({"task": "segment", "model", "backbone", "args", "classes"}), so a file rebuilds its own model.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from cvkit.errors import CvkitError, UsageError
from cvkit.weights import load_state_dict_strict, read_state_dict

from .fcn import SEG_MODELS, MMSegFCN, SkipFCN, TorchvisionFCN

SKIP_MODELS = ("fcn32s", "fcn16s", "fcn8s")
#: state_dict prefixes that depend on the class count, per model form
CLASSIFIER_KEYS = {SkipFCN: ("head.score.", "head.upscore."),
                   TorchvisionFCN: ("classifier.4.", "aux_classifier.4."),
                   MMSegFCN: ("decode_head.conv_seg.", "auxiliary_head.conv_seg.")}


def is_skip(model: str) -> bool:
    """Whether `model` is one of the paper's skip nets (which take any backbone)."""
    return SEG_MODELS.canonical(model) in SKIP_MODELS


def build_model(spec: dict, *, aux: bool = False) -> nn.Module:
    """The model of `spec` ({model, backbone, args}); `aux` adds the auxiliary head where the model
    has one (training). The skip nets use `backbone`; the other forms fix their own."""
    name = spec["model"]
    canonical = SEG_MODELS.canonical(name)
    kwargs = dict(spec.get("args") or {})
    if canonical in SKIP_MODELS:
        if spec.get("backbone"):
            kwargs["backbone"] = spec["backbone"]
    else:
        if spec.get("backbone"):
            raise UsageError(f"model '{name}' has its own backbone; --backbone applies to "
                             f"{', '.join(SKIP_MODELS)} only")
        kwargs["aux"] = aux
        if kwargs.get("output_stride") is None:
            kwargs.pop("output_stride", None)
    try:
        return SEG_MODELS.build(canonical, **kwargs)
    except TypeError as e:
        raise UsageError(f"model '{name}': bad arguments {sorted(kwargs)} ({e})") from None


def num_classes_of(model: nn.Module) -> int:
    """The class count of a built model (its final classifier's outputs)."""
    prefix = _classifier_prefixes(model)[0]
    return next(v.shape[0] for k, v in model.state_dict().items() if k.startswith(prefix) and k.endswith("weight"))


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    for cls, prefixes in CLASSIFIER_KEYS.items():
        if isinstance(model, cls):
            return prefixes
    raise CvkitError(f"unknown segmentation model {type(model).__name__}")


def load_segment_weights(model: nn.Module, location: str, *, converter: str | None = None,
                         sha256: str | None = None, reinit_classifier: bool = False) -> nn.Module:
    """Load a checkpoint strictly. Mis-shaped classifier keys (another class count) raise one line
    offering `--num-classes`, or with `reinit_classifier` keep the model's initial classifier with a
    warning."""
    path, sd = read_state_dict(location, converter, sha256)
    own = model.state_dict()
    prefixes = _classifier_prefixes(model)
    shaped = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if shaped and all(k.startswith(prefixes) for k in shaped):
        theirs = next(sd[k].shape[0] for k in shaped if k.startswith(prefixes[0]) and k.endswith("weight"))
        ours = num_classes_of(model)
        if not reinit_classifier:
            raise CvkitError(f"{Path(path).name} is for {theirs} classes, the model has {ours}; pass "
                             f"--num-classes {ours} to re-initialise the classifier (or --num-classes {theirs})")
        warnings.warn(f"{Path(path).name} is for {theirs} classes: the classifier is re-initialised for {ours} "
                      "classes (train it before use)", stacklevel=2)
        sd = {**sd, **{k: own[k] for k in own if k.startswith(prefixes)}}
    load_state_dict_strict(model, sd, str(path))
    return model


def read_meta(path: str | os.PathLike) -> dict:
    """cvkit's segment metadata of a .safetensors file ({} for any other file)."""
    if not str(path).endswith(".safetensors") or not Path(path).is_file():
        return {}
    try:
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get("cvkit")
    except Exception:  # noqa: BLE001 - unreadable files are reported when loaded
        return {}
    meta = json.loads(raw) if raw else {}
    return meta if meta.get("task") == "segment" else {}


def save_weights(model: nn.Module, path: str | os.PathLike, spec: dict, classes, *,
                 half: bool = False) -> Path:
    """Write the model's state_dict (without the auxiliary head; fp16 with `half`) as safetensors with
    the metadata that rebuilds it; atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"task": "segment", "model": spec["model"], "backbone": spec.get("backbone"),
            "args": dict(spec.get("args") or {}), "classes": classes}
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith(("aux_classifier.", "auxiliary_head.")):
            continue
        v = v.detach().cpu()
        sd[k] = (v.half() if half and v.is_floating_point() else v).contiguous()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(sd, str(tmp), metadata={"cvkit": json.dumps(meta)})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


__all__ = ["CLASSIFIER_KEYS", "SKIP_MODELS", "build_model", "is_skip", "load_segment_weights", "num_classes_of",
           "read_meta", "save_weights"]
