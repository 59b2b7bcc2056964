"""Latency at batch 1 of eager PyTorch, deploy PyTorch, TorchScript and onnxruntime, same inputs,
one run.

Task presets are measured on exactly what the task feeds its model for one frame of the preset's
input size (128x128 for super-resolution presets, which have none; `--imgsz` to change it); their "eager" column is the model as the task holds it (tasks
that deploy at load time already hold the deployed form). Backbones are measured at 224x224 in
training form (eager) and after `cvkit.nn.deploy`. onnxruntime runs with graph optimisation on
(ORT_ENABLE_ALL), the CPU provider and torch's intra-op thread count, as `--weights model.onnx`
does. Ratios are what to read; absolute numbers on shared machines are noisy.

Reference point (not measured here): ultralytics publishes YOLOv8n at 80.4 ms per 640x640 image
with ONNX on a CPU (their hardware); compare with the detect rows only as an order of magnitude.

    python benchmarks/export.py
    python benchmarks/export.py --presets scnet_x4 --backbones resnet18 --min-time 2 --threads 1
"""
from __future__ import annotations

import argparse
import functools
import tempfile
import time
import warnings
from pathlib import Path

import torch
from backbones import write_report  # benchmarks/backbones.py

import cvkit
from cvkit.errors import CvkitError
from cvkit.export import _capture, _imgsz, export_module, load_exported
from cvkit.nn import deploy

PRESETS = ["retinanet_shapes", "fcn8s_synthetic", "panoptic_deeplab_synthetic", "fastdepth_synthetic",
           "scnn_synthetic", "scnet_x4", "cfsr_x4"]
SR_SIZE = (128, 128)  # frame size for presets without imgsz (super-resolution)
BACKBONES = ["resnet18", "mobilenet_v2", "convnext_atto", "fasternet_t0", "lsnet_t"]


def bench(fn, min_time: float) -> float:
    """Milliseconds per call: two warm-up calls, then repeat for at least `min_time` seconds."""
    with torch.inference_mode():
        fn()
        fn()
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time and n >= 3:
                return 1e3 * elapsed / n


def measure(label: str, eager: torch.nn.Module, args: tuple, kwargs: dict, min_time: float, tmp: Path) -> list:
    deployed = deploy(eager)
    row = [label, "x".join(str(s) for s in args[0].shape)]
    times = [bench(functools.partial(m, *args, **kwargs), min_time) for m in (eager, deployed)]
    for fmt in ("torchscript", "onnx"):
        try:
            export_module(deployed, args, tmp / f"m.{fmt}", fmt, kwargs=kwargs)
            times.append(bench(functools.partial(load_exported(tmp / f"m.{fmt}"), *args, **kwargs), min_time))
        except CvkitError as e:
            print(f"{label} {fmt}: {e}")
            times.append(float("nan"))
    return row + [f"{t:.1f}" for t in times] + [f"{times[0] / times[3]:.2f}x", f"{times[1] / times[3]:.2f}x"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="*", default=PRESETS)
    ap.add_argument("--backbones", nargs="*", default=BACKBONES)
    ap.add_argument("--imgsz", nargs=2, type=int, default=None, help="frame size H W for the presets")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads for torch and onnxruntime "
                    "(default: torch's; 1 gives steadier figures on a shared machine)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "export.md")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)

    header = ["model", "input", "eager ms", "deploy ms", "TorchScript ms", "onnxruntime ms", "eager/ORT",
              "deploy/ORT"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets:
            torch.manual_seed(0)
            try:
                task = cvkit.load_task(name, weights="none")
            except CvkitError as e:
                print(f"{name}: skipped ({e})")
                continue
            size = args.imgsz or (None if task.preset.get("imgsz") else SR_SIZE)
            call_args, call_kwargs = _capture(task, _imgsz(size, task.preset))
            rows.append(measure(f"{name} ({task.name})", task.model, call_args, call_kwargs, args.min_time,
                                Path(tmp)))
            print(" | ".join(rows[-1]))
        for name in args.backbones:
            torch.manual_seed(0)
            model = cvkit.create_backbone(name).eval()
            rows.append(measure(f"{name} (backbone)", model, (torch.randn(1, 3, 224, 224),), {}, args.min_time,
                                Path(tmp)))
            print(" | ".join(rows[-1]))

    title = (f"# Export latency, batch 1 ({torch.__version__}, {torch.get_num_threads()} threads, "
             f"{torch.backends.cpu.get_cpu_capability()})")
    note = ("Produced by `python benchmarks/export.py`; milliseconds per forward pass; ratios above 1 mean "
            "onnxruntime is faster.")
    reference = ("Reference (not measured here): ultralytics' published YOLOv8n CPU ONNX latency, 80.4 ms at "
                 "640x640 on their hardware.")
    lines = [title, "", note, "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", reference]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
