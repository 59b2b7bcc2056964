"""Detection throughput at 640x640: eager vs deploy vs bf16 autocast, batch 1 and 8, with peak RSS.

Frames/s of one step = model forward + postprocess (`Detector.predict` at the head's test_cfg:
scores, top-k per level, box decoding, class-wise NMS; what `DetectTask.postprocess` runs before
converting to numpy) for each backbone family's smallest variant with RetinaNet (FPN, C3-C5) and
with SSDLite (its extras, C4-C5), the RCNet and SEPC necks on ResNet-18, and mmdet's SSD300 VGG16
(at 640 too). All are
built by `tasks/detect/build.py` as `cvkit detect --backbone/--neck/--head` builds them, with 80
classes and random weights; the backbone levels are picked by stride (8/16/32, or 16/32 for
SSDLite: `build.NECK_STRIDES`).

Random weights score every anchor below the heads' thresholds, so the steps above postprocess
almost nothing; the postprocess of one image is therefore also timed alone at score threshold 0,
where every level fills `nms_pre` (1000) candidates: its worst case. bf16 is autocast on the
deploy graph, measured only where the CPU has native bf16. The eager graph is timed at batch 1
only unless `--eager-batches 1 8` (it would add a third to the run time).

Each configuration runs in a fresh child process: `RSS` is the resident size after building the
model and its deploy copy, `peak` the process's high-water mark (ru_maxrss) after all batch-1
runs and after all batch-8 runs.

    python benchmarks/detect_speed.py                        # everything, about 10 minutes
    python benchmarks/detect_speed.py --configs resnet18+fpn+retinanet --batches 1 --min-time 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from backbones import bench, write_report  # benchmarks/backbones.py: the same timing loop

from cvkit.hardware import cpu_has_native_bf16
from cvkit.nn import count_gflops, deploy

BACKBONES = ["resnet18", "mobilenet_v1", "mobilenet_v2", "convnext_atto", "inceptionnext_atto", "lsnet_t",
             "fasternet_t0", "unireplknet_a", "hornet_t_7x7", "convformer_s18"]
CONFIGS = ([f"{b}+fpn+retinanet" for b in BACKBONES] + [f"{b}+ssdlite_extra+ssdlite" for b in BACKBONES]
           + ["resnet18+rcnet+retinanet", "resnet18+sepc+retinanet", "ssd300_vgg16"])
SIZE = 640


def build(config: str):
    """The detector of `config` ("backbone+neck+head" or a DETECTORS name) and its backbone strides."""
    from cvkit.tasks.detect.build import build_composed
    from cvkit.tasks.detect.detector import DETECTORS

    if "+" not in config:
        model = DETECTORS.get(config)(80)
    else:
        model = build_composed(*config.split("+"), 80)
    return model.eval(), model.backbone.feature_spec.strides


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step(net, x, metas, cfg, bf16: bool = False):
    """Forward (under bf16 autocast with `bf16`) + postprocess: one Detections per image."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        raw = net(x)
    return net.predict(raw, metas, cfg)


def measure(model, fast, batch: int, min_time: float, eager: bool = True) -> dict:
    """Seconds per step at `batch`: eager (None unless `eager`), deploy, bf16 (None without native
    bf16)."""
    x = torch.randn(batch, 3, SIZE, SIZE)
    metas, cfg = [{"img_shape": (SIZE, SIZE)}] * batch, model.head.test_cfg
    return {"batch": batch,
            "eager": bench(lambda v: step(model, v, metas, cfg), x, min_time) if eager else None,
            "deploy": bench(lambda v: step(fast, v, metas, cfg), x, min_time),
            "bf16": bench(lambda v: step(fast, v, metas, cfg, True), x, min_time) if cpu_has_native_bf16() else None}


def postprocess_seconds(fast, min_time: float) -> dict:
    """Seconds of the postprocess of one image at the head's score threshold and at 0 (every level
    fills `nms_pre` candidates: the worst case)."""
    metas, cfg = [{"img_shape": (SIZE, SIZE)}], fast.head.test_cfg
    with torch.inference_mode():
        raw = fast(torch.randn(1, 3, SIZE, SIZE))
    return {name: bench(lambda _, c=c: fast.predict(raw, metas, c), None, min_time)
            for name, c in (("default", cfg), ("worst", replace(cfg, score_thr=0.0)))}


def child(config: str, batches: list[int], eager_batches: list[int], min_time: float) -> dict:
    """Measure one configuration in this process; one JSON-able dict."""
    torch.manual_seed(0)
    model, strides = build(config)
    fast = deploy(model)
    out = {"config": config, "strides": list(strides), "gflops": count_gflops(fast, (SIZE, SIZE), macs=False),
           "rss_mb": _rss_mb(), "rows": []}
    for b in batches:
        out["rows"].append({**measure(model, fast, b, min_time, b in eager_batches), "peak_mb": _peak_mb()})
    out["post"] = postprocess_seconds(fast, min_time)
    return out


def run_child(config: str, batches: list[int], eager_batches: list[int], min_time: float) -> dict:
    cmd = [sys.executable, __file__, "--child", config, "--batches", *map(str, batches), "--eager-batches",
           *map(str, eager_batches), "--min-time", str(min_time), "--threads", str(torch.get_num_threads())]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="*", default=CONFIGS)
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--eager-batches", nargs="*", type=int, default=[1],
                    help="batch sizes that also time the eager graph (at 8 it adds a third to the run time)")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per measurement (at least 2 steps)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "detect_speed.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child, args.batches, args.eager_batches, args.min_time)))
        return

    start, load = time.perf_counter(), os.getloadavg()
    bf16 = "native, autocast on the deploy graph" if cpu_has_native_bf16() else "not native (skipped)"
    eager = ", ".join(map(str, args.eager_batches)) or "none"
    lines = [
        (f"# Detection throughput at {SIZE}x{SIZE} (torch {torch.__version__}, {torch.get_num_threads()} "
         f"threads, {torch.backends.cpu.get_cpu_capability()}; 80 classes, random weights)"),
        "",
        ("Frames/s of forward + postprocess at the head's test_cfg. `post ms`: the postprocess of one image "
         "at the head's score threshold / at 0 (every level fills nms_pre: the worst case). RSS after "
         "building the model and its deploy copy; peak = the child process's ru_maxrss after that batch "
         f"size's runs. bf16: {bf16}. Eager at batch {eager} only."),
        "",
        ("| detector | backbone strides | GFLOPs/img | batch | eager fps | deploy fps | bf16 fps "
         "| deploy/eager | bf16/deploy | post ms | RSS MB | peak MB |"),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for config in args.configs:
        r = run_child(config, args.batches, args.eager_batches, args.min_time)
        post = f"{1000 * r['post']['default']:.0f} / {1000 * r['post']['worst']:.0f}"
        for row in r["rows"]:
            b, t_eager, t_bf16 = row["batch"], row["eager"], row["bf16"]
            fps_eager, vs_eager = (f"{b / t_eager:.2f}", f"{t_eager / row['deploy']:.2f}") if t_eager else ("-", "-")
            fps_bf16, vs_bf16 = (f"{b / t_bf16:.2f}", f"{row['deploy'] / t_bf16:.2f}") if t_bf16 else ("-", "-")
            line = (f"| {config} | {'/'.join(map(str, r['strides']))} | {r['gflops']:.1f} | {b} | {fps_eager} "
                    f"| {b / row['deploy']:.2f} | {fps_bf16} | {vs_eager} | {vs_bf16} | {post} "
                    f"| {r['rss_mb']:.0f} | {row['peak_mb']:.0f} |")
            print(line, flush=True)
            lines.append(line)
    minutes = (time.perf_counter() - start) / 60
    end = os.getloadavg()
    lines += ["", (f"Load average (1/5/15 min) at the start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, "
                   f"at the end {end[0]:.2f} / {end[1]:.2f} / {end[2]:.2f}; whole run {minutes:.1f} min.")]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
