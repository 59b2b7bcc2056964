"""Segmentation throughput and memory, as ratios measured in one run.

1. Frames/s at 512x512 and 1024x512 (batch 1) for FCN-8s on two backbones and for the dilated FCN
   (torchvision's fcn_resnet50, output stride 8): eager vs deploy (BN folded) vs deploy + channels_last.
2. Sliding-window overhead: `--mode slide --crop 512 --stride 341` against whole-image inference of
   the same model on a 1024x512 image (mmseg's default window for 512 crops; 2 x 3 windows).
3. Peak RSS of sliding-window inference (labels only, the band-wise accumulation of
   `cvkit.tasks.segment.inference`) on a 3840x2160 image, in a fresh process: the resident size
   after building the model and the image, and its peak during inference (polled every 5 ms).

The video pipeline against model-only fps is `benchmarks/pipeline.py --preset fcn8s_synthetic`.
Weights are random (speed does not depend on them). Example:

    python benchmarks/segment_speed.py --min-time 2 --out benchmarks/results/segment_speed.md
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from backbones import bench, write_report  # benchmarks/backbones.py: the same timing loop
from cvkit.tasks.segment.build import build_model

from cvkit.nn import deploy

MODELS = {
    "fcn8s_mobilenet_v2": {"model": "fcn8s", "backbone": "mobilenet_v2", "args": {"num_classes": 21}},
    "fcn8s_resnet50": {"model": "fcn8s", "backbone": "resnet50", "args": {"num_classes": 21}},
    "fcn_resnet50 (os 8)": {"model": "fcn_resnet50", "args": {"num_classes": 21}},
}
SIZES = {"512x512": (512, 512), "1024x512": (512, 1024)}


def rss_child(spec_name: str, crop: int, stride: int) -> dict:
    """Run the 4K slide measurement in this script as a child process; its JSON line."""
    out = subprocess.run([sys.executable, __file__, "--rss-child", spec_name, str(crop), str(stride)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _current_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _rss_child(spec_name: str, crop: int, stride: int) -> None:
    import threading

    from cvkit.tasks.segment.inference import slide_labels

    model = deploy(build_model(MODELS[spec_name])).eval()
    x = torch.randn(1, 3, 2160, 3840)
    with torch.inference_mode():
        model(torch.randn(1, 3, crop, crop))
    base, peak, done = _current_mb(), [0.0], threading.Event()

    def poll():
        while not done.wait(0.005):
            peak[0] = max(peak[0], _current_mb())

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    start = time.perf_counter()
    with torch.inference_mode():
        labels = slide_labels(model, x, (crop, crop), (stride, stride))
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    full = 21 * 2160 * 3840 * 4 / 2**20  # what a full-size float32 logit canvas would take
    print(json.dumps({"model": spec_name, "labels": list(labels.shape), "baseline_mb": round(base),
                      "peak_mb": round(peak[0]), "growth_mb": round(peak[0] - base), "full_canvas_mb": round(full),
                      "seconds": round(seconds, 1)}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        _rss_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    ap.add_argument("--rss-model", default="fcn8s_mobilenet_v2", choices=list(MODELS))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "segment_speed.md")
    args = ap.parse_args()

    torch.manual_seed(0)
    lines = [(f"# Segmentation throughput (torch {torch.__version__}, {torch.get_num_threads()} threads, "
             f"{torch.backends.cpu.get_cpu_capability()}; random weights, batch 1)"), "",
             "| model | size | eager fps | deploy fps | deploy+CL fps | deploy/eager | CL/deploy |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in args.models:
        model = build_model(MODELS[name]).eval()
        fast = deploy(model)
        for size in args.sizes:
            x = torch.randn(1, 3, *SIZES[size])
            t_eager = bench(model, x, args.min_time)
            t_deploy = bench(fast, x, args.min_time)
            fast.to(memory_format=torch.channels_last)
            t_cl = bench(fast, x.contiguous(memory_format=torch.channels_last), args.min_time)
            fast.to(memory_format=torch.contiguous_format)
            row = (f"| {name} | {size} | {1 / t_eager:.2f} | {1 / t_deploy:.2f} | {1 / t_cl:.2f} | "
                   f"{t_eager / t_deploy:.2f} | {t_deploy / t_cl:.2f} |")
            print(row, flush=True)
            lines.append(row)

    from cvkit.tasks.segment.inference import slide_labels, whole_labels

    lines += ["", "Sliding window (crop 512, stride 341) against whole-image inference at 1024x512:", "",
              "| model | whole s | slide s | slide/whole |", "| --- | ---: | ---: | ---: |"]
    for name in args.models:
        fast = deploy(build_model(MODELS[name])).eval()
        x = torch.randn(1, 3, 512, 1024)
        t_whole = bench(lambda v, m=fast: whole_labels(m, v), x, args.min_time)
        t_slide = bench(lambda v, m=fast: slide_labels(m, v, (512, 512), (341, 341)), x, args.min_time)
        row = f"| {name} | {t_whole:.3f} | {t_slide:.3f} | {t_slide / t_whole:.2f} |"
        print(row, flush=True)
        lines.append(row)

    r = rss_child(args.rss_model, 512, 341)
    lines += ["", (f"Slide inference on a 3840x2160 image ({r['model']}, crop 512, stride 341, fresh process): "
              f"baseline RSS {r['baseline_mb']} MB, peak {r['peak_mb']} MB (+{r['growth_mb']} MB; a full-size "
              f"21-class float32 logit canvas alone would take {r['full_canvas_mb']} MB), {r['seconds']} s.")]
    print(lines[-1])
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
