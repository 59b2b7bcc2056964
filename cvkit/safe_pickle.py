"""Read the weights out of a torch checkpoint that pickles whole `nn.Module` objects (FastDepth's
releases: `checkpoint['model']` is the model itself), without executing anything from the file.

`torch.load(weights_only=True)` rejects such files because their pickle names the model's classes.
Here a restricted unpickler admits only tensor rebuilding (torch's `_rebuild_tensor_v2`,
`_rebuild_parameter` and friends, re-implemented here: the file never chooses the code that
runs), torch's storage types, `collections.OrderedDict`, `set` and `frozenset`. Every other global
becomes an inert placeholder class: pickle may create instances of it the way it rebuilds objects
(NEWOBJ, then BUILD records their state), but calling it, as a REDUCE does (`os.system`, `eval`,
`subprocess.Popen`, ...), raises CvkitError before anything runs. The state dict is then read
from the placeholders' `_parameters`, `_buffers` and `_modules`, as `nn.Module.state_dict` would.

Both torch formats are read: the zip format (torch >= 1.6: `*/data.pkl` plus one file per
storage) and the legacy one (torch < 1.6: magic number, pickles and raw storages in sequence).
"""
from __future__ import annotations

import _compat_pickle
import collections
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import CvkitError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_CONTAINER_KEYS = ("model", "state_dict", "net", "module", "model_state_dict")
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}
_OS_ALIASES = {"posix": "os", "nt": "os"}  # where os.system & co. say they live


class _Refusing(type):
    """Metaclass of the placeholders: calling one (a pickle REDUCE) is refused."""

    def __call__(cls, *args, **kwargs):
        raise CvkitError(f"the pickle asks to call {cls._cvkit_name}; cvkit refuses to call "
                         f"{cls._cvkit_name} (only torch tensor rebuilding is allowed) and ran nothing")


class Placeholder(metaclass=_Refusing):
    """Inert stand-in for a class named in the pickle; keeps the state pickle hands it."""

    _cvkit_name = "?"

    def __new__(cls, *args, **kwargs):  # NEWOBJ: cls.__new__(cls, *args)
        return object.__new__(cls)

    def __setstate__(self, state) -> None:  # BUILD
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict)
                                                               for s in state):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict state, slot state)
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_cvkit_state"] = state

    def __setitem__(self, key, value) -> None:  # SETITEMS on a pickled dict subclass
        self.__dict__.setdefault("_cvkit_items", {})[key] = value

    def append(self, value) -> None:  # APPENDS on a pickled list subclass
        self.__dict__.setdefault("_cvkit_list", []).append(value)

    def extend(self, values) -> None:
        self.__dict__.setdefault("_cvkit_list", []).extend(values)

    def __repr__(self) -> str:
        return f"<placeholder {self._cvkit_name}>"


class _StorageType:
    """A storage class named in a persistent id (`torch.FloatStorage`, `torch.cuda.HalfStorage`)."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _as_strided(storage, offset, size, stride) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise CvkitError(f"a tensor in the pickle is built on {type(storage).__name__}, not a storage")
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset))


def _rebuild_tensor(storage, offset, size, stride):
    return _as_strided(storage, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _as_strided(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None):
    return data


def _defaultdict(default_factory=None):
    return {}  # a plain dict: the factory (a placeholder) must never be called on a missing key


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args)  # func came through find_class: one of these rebuilders, or a refusing placeholder


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.nn.parameter", "Parameter"): _rebuild_parameter,  # Parameter(data, requires_grad)
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): _defaultdict,  # a pickled optimizer's `state`
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    # torch 0.4 modules pickled their `_backend` as this call with no arguments: stand in None
    ("torch.nn.backends.thnn", "_get_thnn_function_backend"): lambda: None,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storage: Callable[..., torch.Tensor], placeholders: dict):
        super().__init__(file)
        self._storage = storage
        self._placeholders = placeholders

    def find_class(self, module: str, name: str) -> Any:
        # protocol 2 writes Python 2 names (`__builtin__.set`, `commands.call`): map them as pickle does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[module, name]
        module = _OS_ALIASES.get(module, _compat_pickle.IMPORT_MAPPING.get(module, module))
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        full = f"{module}.{name}"
        if full not in self._placeholders:
            self._placeholders[full] = _Refusing(name, (Placeholder,), {"_cvkit_name": full,
                                                                        "__module__": module})
        return self._placeholders[full]

    def persistent_load(self, pid) -> Any:
        kind = pid[0] if isinstance(pid, tuple) and len(pid) > 1 else None
        if kind == "module":  # legacy format: (class, its source file, its source), for a diff warning
            return pid[1]
        if kind != "storage":
            raise CvkitError(f"unknown persistent id {str(pid)[:60]} in the pickle")
        return self._storage(*pid[1:])


def _storage_args(storage_type, key, numel) -> tuple[torch.dtype, str, int]:
    if not isinstance(storage_type, _StorageType):
        raise CvkitError(f"unknown storage type {storage_type!r} in the pickle")
    return storage_type.dtype, str(key), int(numel)


def _bytes_to_tensor(raw: bytes, dtype: torch.dtype, numel: int, key: str) -> torch.Tensor:
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if len(raw) != numel * itemsize:
        raise CvkitError(f"storage {key}: {len(raw)} bytes for {numel} elements of {dtype}")
    return torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)


def _load_zip(path: Path) -> Any:
    placeholders: dict = {}
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        pkl = next((n for n in sorted(names) if n.endswith("/data.pkl") and n.count("/") == 1), None)
        if pkl is None:
            raise CvkitError("a zip file without */data.pkl, not a torch checkpoint")
        root = pkl[:-len("data.pkl")]
        if root + "byteorder" in names and zf.read(root + "byteorder").strip() != b"little":
            raise CvkitError("a big-endian checkpoint; only little-endian files are read")
        storages: dict[str, torch.Tensor] = {}

        def storage(storage_type, key, location, numel):
            dtype, key, numel = _storage_args(storage_type, key, numel)
            if key not in storages:
                try:
                    raw = zf.read(f"{root}data/{key}")
                except KeyError:
                    raise CvkitError(f"storage {key} is missing from the zip") from None
                storages[key] = _bytes_to_tensor(raw, dtype, numel, key)
            return storages[key]

        with zf.open(pkl) as f:
            return _Unpickler(f, storage, placeholders).load()


def _load_legacy(f) -> Any:
    placeholders: dict = {}
    storages: dict[str, torch.Tensor] = {}

    def storage(storage_type, root_key, location, numel, view_metadata=None):
        dtype, root_key, numel = _storage_args(storage_type, root_key, numel)
        root = storages.setdefault(root_key, torch.zeros(numel, dtype=dtype))
        if view_metadata is None:
            return root
        _, offset, size = view_metadata
        return root[int(offset):int(offset) + int(size)]

    def load():
        return _Unpickler(f, storage, placeholders).load()

    if load() != _LEGACY_MAGIC:
        raise CvkitError("not a torch checkpoint (neither a zip file nor torch's legacy format)")
    load()  # protocol version
    load()  # sys_info
    obj = load()
    keys = load()
    for key in keys:
        if key not in storages:
            raise CvkitError(f"storage {key} is listed but not used by the pickle")
        t = storages[key]
        numel = int.from_bytes(f.read(8), "little")
        if numel != t.numel():
            raise CvkitError(f"storage {key}: {numel} elements on disk, {t.numel()} in the pickle")
        t.copy_(_bytes_to_tensor(f.read(numel * t.element_size()), t.dtype, numel, key))
    return obj


def load_pickled(path: str | Path) -> Any:
    """The object pickled in torch checkpoint `path`, with inert placeholders for its classes."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with open(path, "rb") as f:
            return _load_legacy(f)
    except CvkitError as e:
        raise CvkitError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError,
            KeyError, RuntimeError, OSError, zipfile.BadZipFile) as e:
        raise CvkitError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: "
                         f"{str(e)[:120]})") from None


def _is_module(obj) -> bool:
    return isinstance(obj, Placeholder) and isinstance(obj.__dict__.get("_modules"), Mapping)


def _module_state_dict(module: Placeholder, prefix: str, out: dict) -> None:
    d = module.__dict__
    skip = d.get("_non_persistent_buffers_set") or ()
    for group in ("_parameters", "_buffers"):
        for name, t in (d.get(group) or {}).items():
            if t is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(t, torch.Tensor):
                raise CvkitError(f"{prefix}{name} in {module._cvkit_name} is not a tensor")
            out[prefix + name] = t.detach()
    for name, child in d["_modules"].items():
        if child is not None:
            if not _is_module(child):
                raise CvkitError(f"{prefix}{name} in {module._cvkit_name} is not a module")
            _module_state_dict(child, f"{prefix}{name}.", out)


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(t, torch.Tensor) for t in obj.values())


def load_pickled_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict of the model pickled in `path`: the top-level object when it is a module,
    else the first module under 'model', 'state_dict', 'net', 'module', 'model_state_dict' or any
    other key, else the first dict of tensors found the same way. Nothing from the file runs;
    the tensors come back detached (no pickled hooks or flags)."""
    obj = load_pickled(path)
    candidates = [obj]
    if isinstance(obj, Mapping):
        candidates += [obj[k] for k in _CONTAINER_KEYS if k in obj] + list(obj.values())
    model = next((c for c in candidates if _is_module(c)), None)
    if model is None:
        sd = next((c for c in candidates if _is_tensor_dict(c)), None)
        if sd is None:
            raise CvkitError(f"{path} holds no pickled nn.Module or state_dict")
        return {str(k): t.detach() for k, t in sd.items()}
    out: dict[str, torch.Tensor] = {}
    try:
        _module_state_dict(model, "", out)
    except RecursionError:
        raise CvkitError(f"{path}: the pickled module tree is cyclic") from None
    except CvkitError as e:
        raise CvkitError(f"{path}: {e}") from None
    return out
