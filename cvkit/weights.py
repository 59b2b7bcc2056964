"""Weights: cache, download with sha256 pinning, safe loading, key converters, strict loading.

Files are read with safetensors or `torch.load(weights_only=True)` only. Official checkpoints
are converted to cvkit's names by small pure functions registered per layout in CONVERTERS.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import pickle
import re
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from .errors import CvkitError, UsageError
from .registry import Registry

CONVERTERS = Registry("checkpoint layout")
"""name -> fn(official_state_dict) -> cvkit_state_dict."""

# Containers of the official releases, tried in order (see ARCHITECTURES.md §2).
_CONTAINER_KEYS = ("state_dict", "model", "params", "params_ema", "net", "module")


_RANDOM_INIT_EXPECTED = contextvars.ContextVar("cvkit_random_init_expected", default=False)


@contextlib.contextmanager
def random_init_expected():
    """Inside, `load_weights(model, 'none')` keeps the random init without its warning: for
    callers that replace the weights afterwards (an exported model run in their place)."""
    token = _RANDOM_INIT_EXPECTED.set(True)
    try:
        yield
    finally:
        _RANDOM_INIT_EXPECTED.reset(token)


def register_converter(name: str, **meta) -> Callable:
    return CONVERTERS.register(name, **meta)


def cache_dir() -> Path:
    """$CVKIT_HOME, or ~/.cache/cvkit."""
    return Path(os.environ.get("CVKIT_HOME") or Path.home() / ".cache" / "cvkit")


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _hash_prefix_from_name(name: str) -> str | None:
    """torchvision / OpenMMLab name files `name-<8+ hex>.pth` after their sha256 prefix."""
    m = re.search(r"-([0-9a-f]{8,64})\.(pth|pt|safetensors)$", name)
    return m.group(1) if m else None


def _check_hash(path: Path, sha256: str | None, source: str) -> None:
    expected = sha256 or _hash_prefix_from_name(Path(source).name)
    if not expected:
        return
    actual = sha256_of(path)
    if not actual.startswith(expected.lower()):
        raise CvkitError(f"checksum mismatch for {source}: expected sha256 {expected}, "
                         f"got {actual[:len(expected)]}")


def download(url: str, sha256: str | None = None, dest: Path | None = None,
             progress: bool = True) -> Path:
    """Fetch `url` into the cache (temp file + rename), verify the checksum, return the path.
    A bad download is removed, never left in the cache."""
    dest = Path(dest or cache_dir() / "weights" / Path(url.split("?")[0]).name)
    if dest.exists():
        _check_hash(dest, sha256, url)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=30)
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                raise CvkitError(f"cannot download {url} ({reason}); download it by hand and put it "
                                 f"at {dest}, or pass --weights PATH") from None
            total = int(resp.headers.get("Content-Length") or 0) or None
            from tqdm import tqdm
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                      disable=not progress) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
        _check_hash(Path(tmp), sha256, url)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def resolve(spec: str | os.PathLike, sha256: str | None = None) -> Path:
    """A local path for `spec`: a path (checked to exist) or a URL (downloaded and verified)."""
    spec = str(spec)
    if re.match(r"^(https?|ftp)://", spec):
        return download(spec, sha256)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise CvkitError(f"weights file not found: {spec}")
    if sha256:
        _check_hash(path, sha256, spec)
    return path


def load_file(path: str | os.PathLike) -> dict:
    """The object in a checkpoint file, read safely (safetensors or weights_only torch.load)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file as st_load
            return st_load(str(path))
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Refused by weights_only: a release that pickled whole modules (FastDepth), or a file
        # that calls code. The safe unpickler reads the tensors and refuses any call.
        from .safe_pickle import load_pickled_state_dict
        return load_pickled_state_dict(path)
    except Exception as e:  # noqa: BLE001 - any failure here means "not a readable checkpoint"
        raise CvkitError(f"{path} is not a readable checkpoint ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def unwrap(obj) -> dict[str, torch.Tensor]:
    """The state_dict inside an official release container (`state_dict`, `model`, `params`...)."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in _CONTAINER_KEYS if k in obj and isinstance(obj[k], Mapping)),
                     None)
        if inner is None:
            break
        obj = inner
    raise CvkitError("checkpoint holds no state_dict (expected tensors, or one under "
                     f"{', '.join(_CONTAINER_KEYS)})")


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys under `prefix` with it removed (others dropped) when any key has it; else unchanged."""
    if not any(k.startswith(prefix) for k in sd):
        return dict(sd)
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def load_state_dict_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str = "") -> None:
    """Load `sd` strictly; a mismatch raises one CvkitError listing missing, unexpected and
    mis-shaped keys (a few of each). A model may name key prefixes in `optional_keys` (may be
    absent, e.g. the per-output norms a dense wrapper adds to a classification checkpoint; kept at
    init with a warning) and `ignored_keys` (dropped when present, e.g. a classifier head)."""
    own = model.state_dict()
    optional = tuple(getattr(model, "optional_keys", ()))
    ignored = tuple(getattr(model, "ignored_keys", ()))
    sd = {k: v for k, v in sd.items() if not (ignored and k.startswith(ignored) and k not in own)}
    missing = [k for k in own if k not in sd]
    skipped = [k for k in missing if optional and k.startswith(optional)]
    missing = [k for k in missing if k not in skipped]
    unexpected = [k for k in sd if k not in own]
    shaped = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shaped:
        def few(xs):
            return ", ".join(xs[:4]) + (f" (+{len(xs) - 4} more)" if len(xs) > 4 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {few(unexpected)}")
        if shaped:
            parts.append(f"{len(shaped)} mis-shaped: {few(shaped)}")
        where = f" {source}" if source else ""
        raise CvkitError(f"checkpoint{where} does not fit {type(model).__name__}: " + "; ".join(parts))
    if skipped:
        warnings.warn(f"checkpoint has no {len(skipped)} keys of this form (kept at their init): "
                      + ", ".join(skipped[:4]) + (" ..." if len(skipped) > 4 else ""), stacklevel=3)
    model.load_state_dict(sd, strict=not skipped)


def load_weights(model: nn.Module, weights: str | os.PathLike | None, converter: str | None = None,
                 sha256: str | None = None) -> nn.Module:
    """Load `weights` into `model`: 'none'/None keeps the random init (with a loud warning),
    otherwise resolve, read safely, unwrap, convert with `converter`, load strictly."""
    if weights is None or str(weights).lower() == "none":
        if _RANDOM_INIT_EXPECTED.get():
            return model
        warnings.warn("no weights loaded: the model is randomly initialised and its predictions "
                      "are meaningless", stacklevel=2)
        return model
    path, sd = read_state_dict(weights, converter, sha256)
    load_state_dict_strict(model, sd, str(path))
    return model


def read_state_dict(weights: str | os.PathLike, converter: str | None = None,
                    sha256: str | None = None) -> tuple[Path, dict[str, torch.Tensor]]:
    """(local path, cvkit state_dict) of a checkpoint: resolved (downloaded and verified), read
    safely, unwrapped from its release container and converted with `converter`."""
    path = resolve(weights, sha256)
    sd = unwrap(load_file(path))
    if converter:
        try:
            sd = CONVERTERS.get(converter)(sd)
        except UsageError:
            raise
        except (KeyError, ValueError, RuntimeError) as e:
            raise CvkitError(f"{path} is not a {converter} checkpoint ({e})") from None
    return path, sd
