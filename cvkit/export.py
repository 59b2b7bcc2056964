"""Export a task's model to ONNX or TorchScript, and run the exported files as the task's model.

`export` builds the task a preset describes, applies `cvkit.nn.deploy` (fusion and
re-parameterisation), and traces the model on exactly the inputs the task feeds it for one
`imgsz` frame: the task's `preprocess` and `forward` run once with a hook on the model that records
its call. The model's output structure (a tensor, a list of feature maps, a dict...) is flattened
with `torch.utils._pytree`; the file stores its spec, the validated preset, the input size and
shapes, the class names and the cvkit version as metadata (ONNX `metadata_props`, TorchScript
`_extra_files`), so it runs without the preset. Every export is verified: the file is run on the
traced inputs (and, with `dynamic`, on a second input size) and compared with PyTorch.

`nms` exports `task.export_model(nms=True)` instead of the model: for detection, the model with
decoding and NMS in the graph (ONNX's NonMaxSuppression operator), whose outputs are final boxes;
its `export_metadata` (the output layout, the post-processing settings in the graph) is stored with
the file, whose metadata says `nms: true`. ONNX only: TorchScript has no NMS operator to trace.

`load_exported` reads a file back as an `nn.Module` (`OnnxModule` on onnxruntime's CPU provider,
`TorchScriptModule`) that takes the same arguments and returns the same structure of torch tensors
as the original model; `load_exported_task` builds the task from the file's own preset and swaps
its model for it, so every task verb runs an exported file with its own pre- and post-processing
(for a file exported with `nms`, the post-processing of `task.export_model(nms=True, config=...)`).

Operators (torch's TorchScript-based ONNX exporter): the pure-PyTorch deformable convolution
(integer `gather`) exports, dynamic sizes included; the SCNN message passing is a Python loop over
rows and columns, so its trace holds the traced size (static exports only; `--dynamic` is refused
by the second-size check); `grid_sample` needs opset 16; `torch.fft` (HorNet's global filter) has
no ONNX form in the exporter and goes to TorchScript. Failures are one CvkitError naming the
operator and the opset it needs.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .errors import CvkitError, UsageError

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript"}
_META_KEY = "cvkit"                 # ONNX metadata_props key holding the JSON metadata
_EXTRA_FILE = "cvkit.json"          # TorchScript extra file holding the same JSON
_INSTALL = "pip install 'cvkit[onnx]'"
# An export passes when every output is within VERIFY_ATOL + VERIFY_RTOL * max |PyTorch output| of
# PyTorch (fp32; 10x looser for fp16). The absolute part covers near-zero outputs of untrained models.
VERIFY_RTOL = 1e-3
VERIFY_ATOL = 1e-5


# -- optional dependencies -------------------------------------------------------------------------

def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise CvkitError(f"running .onnx files needs onnxruntime: {_INSTALL}") from None
    return onnxruntime


def _onnx():
    try:
        import onnx
        import onnxruntime  # noqa: F401 - every export is verified with it
    except ImportError:
        raise CvkitError(f"ONNX export needs onnx and onnxruntime: {_INSTALL}") from None
    return onnx


# -- flattening the model's call and outputs ------------------------------------------------------

def _plain(x: Any) -> Any:
    """A JSON round-trip-stable form of a non-tensor call argument."""
    if isinstance(x, (tuple, list, torch.Size)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    return x


def _output_names(out: Any) -> list[str]:
    """One name per tensor leaf, from its path: `output` for a single tensor, `features_0`,
    `seg_pred`, ... otherwise."""
    names = []
    for path, _ in pytree.tree_flatten_with_path(out)[0]:
        parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        name = re.sub(r"\W", "_", "_".join(parts)) or "output"
        name = f"output_{name}" if name[0].isdigit() else name
        while name in names:
            name += "_"
        names.append(name)
    return names


class _Flat(nn.Module):
    """`model` called with the recorded (args, kwargs) structure, its tensor leaves as positional
    inputs and its other leaves as the recorded constants; returns the output's tensor leaves."""

    def __init__(self, model: nn.Module, in_spec: pytree.TreeSpec, leaves: list):
        super().__init__()
        self.model, self.in_spec, self.leaves = model, in_spec, leaves

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        it = iter(tensors)
        leaves = [next(it) if isinstance(x, Tensor) else x for x in self.leaves]
        args, kwargs = pytree.tree_unflatten(leaves, self.in_spec)
        return tuple(pytree.tree_leaves(self.model(*args, **kwargs)))


def _capture(task, imgsz: tuple[int, int], seed: int = 0) -> tuple[tuple, dict]:
    """The (args, kwargs) of the first call of `task.model` while the task handles one random
    `imgsz` = (H, W) frame."""
    from .media import Frame

    img = np.random.default_rng(seed).integers(0, 256, (*imgsz, 3), dtype=np.uint8)
    frame = Frame(image=img, source="export", index=0, timestamp=None, meta={"kind": "image"})
    calls = []

    def hook(module, args, kwargs):
        if not calls:
            calls.append((args, kwargs))

    handle = task.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            batch, _ = task.preprocess([frame])
            task.forward(batch)
    finally:
        handle.remove()
    if not calls:
        raise CvkitError(f"the {task.name} task does not call its model in forward(); nothing to export")
    return calls[0]


def _leaves_of(args: tuple, kwargs: dict) -> tuple[list, pytree.TreeSpec, list[Tensor]]:
    leaves, spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
    return leaves, spec, [x for x in leaves if isinstance(x, Tensor)]


def _max_error(out: list[Tensor], ref: list[Tensor], rtol: float) -> tuple[float, bool]:
    """(max |out - ref| over all outputs, whether every output is within ATOL + rtol * max |ref|
    of its own); integer and boolean outputs must be equal."""
    worst, ok = 0.0, True
    for o, r in zip(out, ref):
        if o.shape != r.shape:
            return float("inf"), False
        if not r.numel():
            continue
        if r.is_floating_point():
            diff = float((o.float() - r.float()).abs().max())
            worst = max(worst, diff)
            ok = ok and diff <= VERIFY_ATOL + rtol * float(r.float().abs().max())
        elif not torch.equal(o.to(r.dtype), r):
            worst, ok = max(worst, float((o.double() - r.double()).abs().max())), False
    return worst, ok


@contextlib.contextmanager
def _quiet_stdout():
    """Silence torch's ONNX exporter, which prints the whole TorchScript graph to the C++ stdout
    when an operator fails to convert; and the tracer's warnings."""
    fd = os.dup(1)
    try:
        with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(sink.fileno(), 1)
            try:
                yield
            finally:
                os.dup2(fd, 1)
    finally:
        os.close(fd)


# -- writing ---------------------------------------------------------------------------------------

def _onnx_error(e: BaseException, opset: int) -> CvkitError:
    """One line naming the operator and the opset it needs, from torch's exporter message."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    op = re.search(r"operator '([^']+)'", text)
    needed = re.search(r"added in version (\d+)", str(e))
    if op and needed:
        return CvkitError(f"the operator {op.group(1)} has no ONNX form at opset {opset}; it needs opset "
                          f"{needed.group(1)} (export with --opset {needed.group(1)})")
    if op:
        return CvkitError(f"the operator {op.group(1)} has no ONNX form at opset {opset} in torch's exporter; "
                          f"export to TorchScript (--format torchscript) instead")
    return CvkitError(f"ONNX export failed at opset {opset}: {text}")


def _write_onnx(flat: _Flat, tensors: list[Tensor], path: Path, meta: dict, opset: int) -> None:
    onnx = _onnx()
    inputs, outputs = [i["name"] for i in meta["inputs"]], meta["outputs"]
    axes = None
    if meta["dynamic"]:
        axes = {n: ({0: "batch", 2: "height", 3: "width"} if t.dim() == 4 else {0: "batch"} if t.dim() else {})
                for n, t in zip(inputs, tensors)}
        axes.update({n: {d: f"{n}_{d}" for d in range(len(s))} for n, s in zip(outputs, meta["output_shapes"])})
    tmp = path.with_name(path.name + ".part")
    try:
        with _quiet_stdout(), torch.no_grad():
            # A copy: the exporter's Conv+BN folding writes into the parameters it is given.
            torch.onnx.export(copy.deepcopy(flat), tuple(tensors), str(tmp), dynamo=False, opset_version=opset,
                              input_names=inputs, output_names=outputs, dynamic_axes=axes,
                              do_constant_folding=True)
        model = onnx.load(str(tmp))
        for key, value in _flat_metadata(meta).items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    except CvkitError:
        raise
    except Exception as e:  # noqa: BLE001 - any exporter failure becomes one line
        raise _onnx_error(e, opset) from None
    finally:
        tmp.unlink(missing_ok=True)


def _flat_metadata(meta: dict) -> dict[str, str]:
    """The full JSON under `cvkit`, and the plain fields other runtimes look for."""
    flat = {_META_KEY: json.dumps(meta), "cvkit_version": meta["cvkit_version"]}
    if meta.get("task"):
        flat["task"] = meta["task"]
    for key in ("imgsz", "classes", "mean", "std", "nms"):
        if meta.get(key) is not None:
            flat[key] = json.dumps(meta[key])
    if meta.get("output_layout"):
        flat["output_layout"] = meta["output_layout"]
    return flat


def _write_torchscript(flat: _Flat, tensors: list[Tensor], path: Path, meta: dict) -> None:
    tmp = path.with_name(path.name + ".part")
    try:
        with _quiet_stdout(), torch.no_grad():
            traced = torch.jit.trace(flat, tuple(tensors), check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={_EXTRA_FILE: json.dumps(meta)})
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - any tracer failure becomes one line
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CvkitError(f"TorchScript export failed: {text}") from None
    finally:
        tmp.unlink(missing_ok=True)


# -- export ----------------------------------------------------------------------------------------

@dataclass
class ExportReport:
    """What `export` wrote: the file, its metadata and the max absolute difference from PyTorch
    found when verifying it (`dynamic_error`: at the second input size)."""

    path: Path
    metadata: dict
    max_error: float
    dynamic_error: float | None = None

    def line(self) -> str:
        shapes = ", ".join("x".join(map(str, i["shape"])) for i in self.metadata["inputs"])
        kind = "dynamic" if self.metadata["dynamic"] else "static"
        size = self.path.stat().st_size / 1e6
        checks = f"max error {self.max_error:.1e}"
        if self.dynamic_error is not None:
            checks += f", {self.dynamic_error:.1e} at a second size"
        what = self.metadata["preset"].get("name") or "model"
        return (f"exported {what} to {self.path} ({self.metadata['format']}, "
                f"{kind} input {shapes}, {size:.1f} MB); verified against PyTorch: {checks}")


def _clean(preset: dict) -> dict:
    """A validated preset without its empty fields (what `load_preset` validates again)."""
    return {k: v for k, v in preset.items() if v not in (None, {}) or k in ("name", "task", "model")}


def _imgsz(imgsz, preset: dict) -> tuple[int, int]:
    size = imgsz if imgsz is not None else preset.get("imgsz") or 256
    size = [size, size] if isinstance(size, int) else list(size)
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise UsageError(f"--imgsz takes two positive integers H W; got {imgsz if imgsz is not None else size}")
    return int(size[0]), int(size[1])


def _check(exported: ExportedModule, flat: _Flat, tensors: list[Tensor], rtol: float, where: str) -> float:
    """Run the file and PyTorch on `tensors`; the max absolute error, or CvkitError (the file is
    then removed) when an output is off by more than VERIFY_ATOL + rtol * its max."""
    with torch.no_grad():
        ref = [r.float().cpu() for r in flat(*tensors)]
        out = [o.float() for o in exported.run_flat([t.cpu() for t in tensors])]
    err, ok = _max_error(out, ref, rtol)
    if not ok:
        exported.path.unlink(missing_ok=True)
        hint = ("sizes are baked into the traced graph: export without --dynamic" if where
                else "NMS kept other boxes (scores or overlaps at a threshold): export without --nms"
                if exported.metadata.get("nms")
                else "an operator converts differently: try --format torchscript")
        raise CvkitError(f"the exported model differs from PyTorch{where} (max error {err:.2e}); {hint}")
    return err


def _preflight(fmt: str, half: bool) -> None:
    """The checks that need no model: format, optional dependencies, fp16 device."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        _onnx()
    if half and not torch.cuda.is_available():
        raise UsageError("--half exports fp16, which needs a CUDA device to trace and run; this machine has none "
                         "(export fp32: it is the fast format on CPU)")


def _grown(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call with every 4-D float tensor replaced by random values 32 rows and 64 columns larger."""
    def grow(x):
        if isinstance(x, Tensor) and x.dim() == 4 and x.is_floating_point():
            n, c, h, w = x.shape
            return torch.randn(n, c, h + 32, w + 64, generator=torch.Generator().manual_seed(1)).to(x)
        return x
    return pytree.tree_map(grow, (tuple(args), dict(kwargs)))


def export_module(model: nn.Module, args: tuple, path: str | os.PathLike, fmt: str = "onnx", *,
                  kwargs: dict | None = None, dynamic: bool = False, half: bool = False, opset: int = 17,
                  metadata: dict | None = None, second=None) -> ExportReport:
    """Trace `model(*args, **kwargs)` (put in eval mode, otherwise as given: apply `deploy`
    first; `half` traces an fp16 copy on CUDA) into `path`,
    store `metadata` with the call and output structure, and verify the file against PyTorch on
    `args` and, with `dynamic`, on `second()` -> (args, kwargs) at another size (default: 4-D
    float inputs grown by 32 rows and 64 columns)."""
    _preflight(fmt, half)
    from . import __version__

    device = torch.device("cuda") if half else torch.device("cpu")
    model = copy.deepcopy(model).half().to(device) if half else model
    model.eval()

    def place(call):
        return pytree.tree_map(lambda x: x.to(device, torch.half if half and x.is_floating_point() else x.dtype)
                               if isinstance(x, Tensor) else x, call)

    leaves, in_spec, tensors = _leaves_of(*place((tuple(args), dict(kwargs or {}))))
    flat = _Flat(model, in_spec, leaves)
    call_args, call_kwargs = pytree.tree_unflatten(leaves, in_spec)
    with torch.no_grad():
        raw = model(*call_args, **call_kwargs)
    out_leaves = pytree.tree_leaves(raw)
    if not out_leaves or not all(isinstance(x, Tensor) for x in out_leaves):
        raise CvkitError(f"{type(model).__name__} returns non-tensor values ({type(raw).__name__}); only "
                         "structures of tensors export")
    names = ["images"] if len(tensors) == 1 else [f"input_{i}" for i in range(len(tensors))]
    meta = {"format_version": 1, "format": fmt, "cvkit_version": __version__, "task": None, "preset": {},
            "imgsz": list(tensors[0].shape[-2:]) if tensors and tensors[0].dim() >= 2 else None,
            "classes": None, "mean": None, "std": None, "nms": False, **(metadata or {}),
            "dynamic": dynamic, "half": half, "opset": opset if fmt == "onnx" else None,
            "inputs": [{"name": n, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
                       for n, t in zip(names, tensors)],
            "input_spec": pytree.treespec_dumps(in_spec),
            "input_constants": [_plain(x) for x in leaves if not isinstance(x, Tensor)],
            "outputs": _output_names(raw), "output_shapes": [list(o.shape) for o in out_leaves],
            "output_spec": pytree.treespec_dumps(pytree.tree_structure(raw))}

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        _write_onnx(flat, tensors, path, meta, opset)
    else:
        _write_torchscript(flat, tensors, path, meta)

    exported = load_exported(path)
    tol = VERIFY_RTOL if not half else 10 * VERIFY_RTOL
    err = _check(exported, flat, tensors, tol, "")
    dyn_err = None
    if dynamic:
        try:
            call2 = second() if second is not None else None
            if call2 is None or [t.shape for t in _leaves_of(*call2)[2]] == [t.shape for t in tensors]:
                call2 = _grown(args, kwargs or {})  # the task feeds one size: try another one anyway
            tensors2 = _leaves_of(*place(call2))[2]
            size2 = "x".join(map(str, tensors2[0].shape))
            dyn_err = _check(exported, flat, tensors2, tol, f" at input {size2}")
        except CvkitError as e:
            path.unlink(missing_ok=True)
            hint = "" if "without --dynamic" in str(e) else " (export without --dynamic)"
            raise CvkitError(f"--dynamic: {e}{hint}") from None
        except Exception as e:  # noqa: BLE001 - the model itself refuses another size
            path.unlink(missing_ok=True)
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CvkitError(f"--dynamic: {type(model).__name__} does not take another input size ({text}); "
                             "export without --dynamic") from None
    return ExportReport(path, meta, err, dyn_err)


def export(preset, fmt: str = "onnx", path: str | os.PathLike | None = None, *, weights: str | None = None,
           overrides: list[str] | None = None, imgsz=None, dynamic: bool = False, half: bool = False,
           opset: int = 17, nms: bool = False) -> ExportReport:
    """Export the model of `preset` (a preset name or YAML path, or a built Task) to `fmt`
    ("onnx" or "torchscript") at `path` (a file, or a folder for `<preset name><ext>`; default
    the current folder), in deploy mode, traced on what the task feeds its model for one `imgsz`
    = (H, W) frame (default: the preset's imgsz, else 256x256). `dynamic` frees batch, height and
    width (verified at a frame 32 rows and 64 columns larger); `half` exports fp16 (needs CUDA);
    `nms` (ONNX only) exports `task.export_model(nms=True)` instead of `task.model`: a module a task
    may define that takes the model's inputs and returns final boxes (decoding and NMS in the graph),
    with an `export_metadata` dict stored in the file's metadata."""
    from .engine.task import Task, build_task
    from .nn import deploy
    from .presets import load_preset

    _preflight(fmt, half)
    if nms and fmt != "onnx":
        raise UsageError("--nms needs --format onnx (NMS in the graph is ONNX's NonMaxSuppression operator)")
    if isinstance(preset, Task):
        if weights is not None or overrides:
            raise UsageError("export: pass weights and overrides when building the task, not with a Task")
        task = preset
    else:
        task = build_task(load_preset(preset, overrides), weights=weights)
    p = _clean(task.preset)
    size = _imgsz(imgsz, p)
    args, kwargs = _capture(task, size)
    model = task.model
    if nms:
        if not hasattr(task, "export_model"):
            raise UsageError(f"--nms: the {task.name} task has no in-graph decoding and NMS to export")
        model = task.export_model(nms=True)

    def norm(key):
        value = getattr(task, key, None)
        value = (p.get("args") or {}).get(key) if value is None else value
        return value.tolist() if isinstance(value, (Tensor, np.ndarray)) else _plain(value)

    name = p.get("name") or task.name
    path = Path(path) if path is not None else Path(".")
    if path.is_dir() or path.suffix == "":
        path = path / f"{name}{FORMATS[fmt]}"
    meta = {"task": task.name, "preset": p, "imgsz": list(size), "classes": p.get("classes"), "nms": nms,
            "mean": norm("mean"), "std": norm("std"), **getattr(model, "export_metadata", {})}
    return export_module(deploy(model), args, path, fmt, kwargs=kwargs, dynamic=dynamic, half=half,
                         opset=opset, metadata=meta,
                         second=lambda: _capture(task, (size[0] + 32, size[1] + 64), seed=1))


# -- running exported files ------------------------------------------------------------------------

def is_exported(spec) -> bool:
    """Whether `spec` names an exported model: a .onnx or .torchscript file (or URL), or a .pt
    TorchScript archive that carries cvkit metadata."""
    if spec is None:
        return False
    s = str(spec).split("?")[0].lower()
    if s.endswith((".onnx", ".torchscript")):
        return True
    if s.endswith(".pt") and os.path.isfile(str(spec)) and zipfile.is_zipfile(str(spec)):
        with zipfile.ZipFile(str(spec)) as z:
            return any(n.endswith(f"/extra/{_EXTRA_FILE}") for n in z.namelist())
    return False


class ExportedModule(nn.Module):
    """An exported model as a module: called like the original model, returns the original
    output structure of torch tensors (see `adopt` for the rest of the model's interface). A
    static export runs any multiple of the exported batch size, in chunks."""

    def __init__(self, path: Path, metadata: dict):
        super().__init__()
        self.path, self.metadata = Path(path), metadata
        self.in_spec = pytree.treespec_loads(metadata["input_spec"])
        self.out_spec = pytree.treespec_loads(metadata["output_spec"])

    def adopt(self, model: nn.Module) -> ExportedModule:
        """Stand in for `model`: what the file does not hold (attributes such as `scale` or
        `feature_spec`, post-processing methods such as `panoptic`) is read from `model`, whose
        parameters are set to NaN first, so nothing can compute silently with its random weights."""
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
        object.__setattr__(self, "_source", model)
        return self

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            source = self.__dict__.get("_source")
            if source is None:
                raise
            return getattr(source, name)

    def forward(self, *args, **kwargs):
        leaves, spec, tensors = _leaves_of(args, kwargs)
        consts = [_plain(x) for x in leaves if not isinstance(x, Tensor)]
        if pytree.treespec_dumps(spec) != self.metadata["input_spec"] or consts != self.metadata["input_constants"]:
            raise CvkitError(f"{self.path.name} was exported for calls with arguments "
                             f"{self.metadata['input_constants']}; got {consts}")
        return pytree.tree_unflatten(self.run_flat(tensors), self.out_spec)

    def run_flat(self, tensors: list[Tensor]) -> list[Tensor]:
        """The flat output tensors for the flat input tensors (fp32 out)."""
        specs = self.metadata["inputs"]
        if len(tensors) != len(specs):
            raise CvkitError(f"{self.path.name} takes {len(specs)} tensor inputs; got {len(tensors)}")
        if self.metadata["dynamic"]:
            return self._run(tensors)
        batch = specs[0]["shape"][0] if specs[0]["shape"] else 0
        n = tensors[0].shape[0] if tensors[0].dim() else 0
        if batch and n != batch and n % batch == 0 and all(t.dim() and t.shape[0] == n for t in tensors):
            chunks = [self.run_flat([t[i:i + batch] for t in tensors]) for i in range(0, n, batch)]
            return [torch.cat(parts) for parts in zip(*chunks)]
        for t, s in zip(tensors, specs):
            if list(t.shape) != s["shape"]:
                h, w = self.metadata["imgsz"]
                raise CvkitError(f"{self.path.name} was exported for input {'x'.join(map(str, s['shape']))} "
                                 f"(static, from {h}x{w} frames); got {'x'.join(map(str, t.shape))}: export "
                                 "again with --imgsz H W for these frames, or with --dynamic")
        return self._run(tensors)

    def _run(self, tensors: list[Tensor]) -> list[Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.path.name}, task={self.metadata['task']}, preset={self.metadata['preset'].get('name')}"


class OnnxModule(ExportedModule):
    """An exported .onnx file run by onnxruntime (CPU provider, graph optimisation on,
    intra-op threads = torch's; CUDA for fp16 files)."""

    def __init__(self, path: str | os.PathLike):
        ort = _onnxruntime()
        path = Path(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several types for bad files
            text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise CvkitError(f"{path} is not a readable ONNX model ({text})") from None
        metadata = _parse_metadata(session.get_modelmeta().custom_metadata_map.get(_META_KEY), path)
        if metadata.get("half"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise CvkitError(f"{path} is fp16 (exported with --half) and this onnxruntime has no CUDA provider; "
                                 "export it again without --half for CPU")
            session = ort.InferenceSession(str(path), opts, providers=["CUDAExecutionProvider"])
        super().__init__(path, metadata)
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]

    def _run(self, tensors: list[Tensor]) -> list[Tensor]:
        feed = {}
        for name, t, spec in zip(self.input_names, tensors, self.metadata["inputs"]):
            feed[name] = t.detach().to("cpu", getattr(torch, spec["dtype"])).contiguous().numpy()
        outs = self.session.run(None, feed)
        return [torch.from_numpy(o).float() if o.dtype == np.float16 else torch.from_numpy(o) for o in outs]


class TorchScriptModule(ExportedModule):
    """An exported TorchScript file (.torchscript, or .pt with cvkit metadata)."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        extra = {_EXTRA_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as e:  # noqa: BLE001 - torch raises several types for bad archives
            text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise CvkitError(f"{path} is not a readable TorchScript model ({text})") from None
        metadata = _parse_metadata(extra[_EXTRA_FILE] or None, path)
        self.device = torch.device("cpu")
        if metadata.get("half"):
            if not torch.cuda.is_available():
                raise CvkitError(f"{path} is fp16 (exported with --half) and needs CUDA; export it again "
                                 "without --half for CPU")
            self.device = torch.device("cuda")
        super().__init__(path, metadata)
        self.script = module.to(self.device).eval()

    def _run(self, tensors: list[Tensor]) -> list[Tensor]:
        with torch.no_grad():
            ins = [t.to(self.device, getattr(torch, s["dtype"])) for t, s in zip(tensors, self.metadata["inputs"])]
            outs = self.script(*ins)
        return [o.float().cpu() if o.dtype == torch.half else o.cpu() for o in outs]


def _parse_metadata(raw: str | bytes | None, path: Path) -> dict:
    if not raw:
        raise CvkitError(f"{path} carries no cvkit metadata; run files made by `cvkit export`")
    try:
        meta = json.loads(raw)
        if meta.get("format_version") != 1:
            raise ValueError(f"format_version {meta.get('format_version')}")
        return meta
    except (ValueError, AttributeError) as e:
        raise CvkitError(f"{path} has unreadable cvkit metadata ({e})") from None


def load_exported(path: str | os.PathLike) -> ExportedModule:
    """An exported file as a module (OnnxModule for .onnx, TorchScriptModule otherwise)."""
    path = Path(path)
    return OnnxModule(path) if path.suffix.lower() == ".onnx" else TorchScriptModule(path)


def load_exported_task(spec, *, overrides: list[str] | None = None, task: str | None = None, **task_options):
    """The Task stored in an exported file (path or URL): built from the file's preset (with
    `overrides`) without weights, its model replaced by the file."""
    from .engine.task import get_task
    from .presets import apply_override, validate
    from .weights import random_init_expected, resolve

    if str(spec).lower().endswith(".onnx"):
        _onnxruntime()
    path = resolve(spec)
    module = load_exported(path)
    meta = module.metadata
    if not meta.get("task"):
        raise UsageError(f"{path.name} holds a bare model (no task); load it with cvkit.export.load_exported")
    if task and meta["task"] != task:
        raise UsageError(f"{path.name} was exported for the {meta['task']} task, not {task}: run it with "
                         f"`cvkit {meta['task']}`")
    preset = validate(_clean(meta["preset"]), str(path))
    for item in overrides or []:
        apply_override(preset, item)
    preset = validate(_clean(preset), str(path))
    with random_init_expected():
        t = get_task(preset["task"]).from_preset(preset, weights="none", **task_options)
    source = t.model
    if meta.get("nms"):  # a stand-in whose post-processing reads the file's final boxes
        if not hasattr(t, "export_model"):
            raise UsageError(f"{path.name} was exported with --nms, which the {t.name} task cannot run")
        source = t.export_model(nms=True, config=meta.get("postprocess"))
    t.model = module.adopt(source).eval()
    return t


__all__ = ["FORMATS", "ExportReport", "ExportedModule", "OnnxModule", "TorchScriptModule", "export",
           "export_module",
           "is_exported", "load_exported", "load_exported_task"]
