"""Super-resolution speed and memory, as ratios measured in one run.

1. ESPCN x3 (the shipped `espcn_x3`: a luma network, chroma upscaled with MATLAB bicubic) on
   640x360 -> 1920x1080: the network alone on the luma plane (NCHW, channels_last as the task
   runs it, channels_last + bf16 autocast), then `pipeline.throughput` on a synthetic 640x360
   video written as 1080p H.264: model (the task's forward: colour conversion, network, chroma
   resize, uint8), task (+ pre/post-processing), predict (+ decoding) and pipeline (`run`: +
   H.264 encoding and JSON lines) fps. The paper claims real-time 1080p video super-resolution
   (on one K2 GPU).
2. CFSR x4 and SCNet-T x4 (random weights) on a 256x256 input: latency of eager (the training
   form), deploy (`cvkit.nn.deploy`: CFSR's edge branches merged; SCNet has nothing to merge),
   deploy + channels_last and deploy + channels_last + bf16 autocast (where the CPU has native
   bf16; with its PSNR against the fp32 output), each the best of interleaved rounds.
3. Peak RSS of `cvkit upscale` upscaling a 960x540 PNG x4 to 3840x2160, whole and with `--tile`,
   each in a fresh process (its VmHWM, the kernel's peak RSS of the process), beside the same
   command on a 64x64 image (the RSS of the imports and the model). SCNet is left out: whole, its x4 MLP
   upsampler holds 64-channel float maps at 3840x2160 (2.1 GB each).

    python benchmarks/upscale_speed.py --out benchmarks/results/upscale_speed.md
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from backbones import best_of, write_report  # benchmarks/backbones.py
from cvkit.tasks.upscale.metrics import psnr
from cvkit.tasks.upscale.models import SR_MODELS
from pipeline import make_video, throughput  # benchmarks/pipeline.py
from torch.utils.flop_counter import FlopCounterMode

from cvkit.api import load_task
from cvkit.hardware import cpu_has_native_bf16
from cvkit.nn import count_gflops, deploy


def bf16_autocast(net):
    def run(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net(x)
    return run


@torch.inference_mode()
def gflops(fn, x: torch.Tensor) -> float:
    """GFLOP of `fn(x)` by torch's flop counter (2 per multiply-add), for callables that take other
    than the 3-channel input `count_gflops` builds."""
    with FlopCounterMode(display=False) as counter:
        fn(x)
    return counter.get_total_flops() / 1e9


def as_image(x: torch.Tensor) -> np.ndarray:
    """The first image of an Nx3xHxW batch in [0, 1] as HxWx3 values in 0..255, rounded as saved."""
    return x[0].float().clamp(0, 1).mul(255).round().permute(1, 2, 0).numpy()


def espcn_section(args, bf16: bool) -> list[str]:
    """ESPCN x3, 640x360 -> 1920x1080: network alone, then model / task / predict / pipeline."""
    task = load_task("espcn_x3")
    net_cl = task.model  # the task runs its model channels_last
    net = copy.deepcopy(net_cl).to(memory_format=torch.contiguous_format)
    y = torch.rand(1, 1, 360, 640)
    y_cl = y.contiguous(memory_format=torch.channels_last)
    fns = {"NCHW": net, "channels_last": net_cl}
    inputs = {"NCHW": y, "channels_last": y_cl}
    if bf16:
        fns["bf16"], inputs["bf16"] = bf16_autocast(net_cl), y_cl
    t = best_of(fns, inputs, args.rounds, args.min_time)
    gflop, task_gflop = gflops(net, y), gflops(task.forward, torch.rand(1, 3, 360, 640))
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "360p.mp4", args.frames, 640, 360)
        r = throughput(task, video, Path(tmp) / "out", frames=args.frames, batch=1, repeats=args.rounds)
    net_fps = ", ".join(f"{name} {1 / s:.1f} fps" for name, s in t.items())
    return ["## ESPCN x3 (`espcn_x3`), 640x360 -> 1920x1080, batch 1", "",
            (f"Network alone on the luma plane ({gflop:.2f} GFLOP per frame): {net_fps} "
             f"({gflop / min(t.values()):.0f} GFLOP/s at the best). The task's forward counts {task_gflop:.2f} "
             "GFLOP per frame (network, colour conversion and the chroma imresize)."), "",
            "| stage | fps | CPU s / frame |", "| --- | ---: | ---: |",
            *(f"| {stage} | {r[f'{stage}_fps']:.2f} | {r[f'{stage}_cpu_s_per_frame']:.3f} |"
              for stage in ("model", "task", "predict", "pipeline")), "",
            (f"pipeline / model {r['pipeline_over_model']:.2f}, pipeline / task {r['pipeline_over_task']:.2f}, "
             f"CPU model / pipeline {r['cpu_model_over_pipeline']:.2f} ({r['frames']} frames, best of "
             f"{r['repeats']} interleaved rounds). Real time for a 30 fps source needs 30 fps."), "",
            "```json", json.dumps({"network_s": t, **r}), "```"]


def latency_section(args, bf16: bool) -> list[str]:
    """CFSR x4 and SCNet-T x4 on 256x256: eager / deploy / deploy+CL / deploy+CL+bf16."""
    x = torch.rand(1, 3, 256, 256)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    lines = ["## CFSR x4 and SCNet-T x4, one 256x256 input (random weights)", "",
             ("| model | GFLOP | eager ms | deploy ms | deploy+CL ms | deploy+CL bf16 ms | eager/deploy "
              "| deploy/CL | bf16 PSNR vs fp32 |"),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in ("cfsr", "scnet_t"):
        model = SR_MODELS.build(name, scale=4).eval()
        fast = deploy(model)
        fast_cl = deploy(model).to(memory_format=torch.channels_last)
        fns = {"eager": model, "deploy": fast, "deploy+CL": fast_cl}
        inputs = {"eager": x, "deploy": x, "deploy+CL": x_cl}
        if bf16:
            fns["bf16"], inputs["bf16"] = bf16_autocast(fast_cl), x_cl
        t = best_of(fns, inputs, args.rounds, args.min_time)
        with torch.inference_mode():
            quality = f"{psnr(as_image(fns['bf16'](x_cl)), as_image(fast(x))):.1f} dB" if bf16 else "-"
        ms = {k: f"{1000 * v:.0f}" for k, v in t.items()}
        row = (f"| {name} | {count_gflops(fast, (256, 256), macs=False):.1f} | {ms['eager']} | {ms['deploy']} | "
               f"{ms['deploy+CL']} | {ms.get('bf16', '-')} | {t['eager'] / t['deploy']:.2f} | "
               f"{t['deploy'] / t['deploy+CL']:.2f} | {quality} |")
        print(row, flush=True)
        lines.append(row)
    return lines


def peak_rss_mb(cmd: list[str], log: Path) -> float:
    """Peak RSS (MB) of `cmd` in a fresh process: its VmHWM, polled until it exits; its output goes
    to `log`. (Its ru_maxrss would not do: Linux carries the peak of the forking process, this one,
    across exec.)"""
    peak = 0.0
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):  # absent once the process has exited
                    peak = int(line.split()[1]) / 1024
            time.sleep(0.01)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{log.read_text()}")
    return peak


def upscale_rss(tmp: Path, preset: str, image: str, options: list[str], tag: str) -> float:
    """Peak RSS (MB) of `cvkit upscale tmp/image --preset preset *options` in a fresh process."""
    cmd = [sys.executable, "-m", "cvkit", "upscale", str(tmp / image), "--preset", preset,
           "--out", str(tmp / f"{preset}_{tag}"), *options]
    return peak_rss_mb(cmd, tmp / f"{preset}_{tag}.log")


def rss_section(args) -> list[str]:
    """Peak RSS of x4 upscaling 960x540 -> 3840x2160, whole vs tiled, one fresh process each."""
    rng = np.random.default_rng(0)
    tiling = ["--tile", str(args.tile), "--tile-overlap", str(args.tile_overlap)]
    lines = ["## Peak RSS, 960x540 -> 3840x2160 (x4), one fresh `cvkit upscale` process each", "",
             f"| preset | 64x64 (baseline) MB | whole MB | {' '.join(tiling)} MB | tiled / whole growth |",
             "| --- | ---: | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for h, w in ((64, 64), (540, 960)):
            cv2.imwrite(str(tmp / f"{w}x{h}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for preset, weights in (("espcn_x4", []), ("cfsr_x4", ["--weights", "none"])):
            base = upscale_rss(tmp, preset, "64x64.png", weights, "base")
            whole = upscale_rss(tmp, preset, "960x540.png", weights, "whole")
            tiled = upscale_rss(tmp, preset, "960x540.png", weights + tiling, "tiled")
            row = (f"| {preset} | {base:.0f} | {whole:.0f} (+{whole - base:.0f}) | {tiled:.0f} (+{tiled - base:.0f}) "
                   f"| {(tiled - base) / (whole - base):.2f} |")
            print(row, flush=True)
            lines.append(row)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the best of each is kept")
    ap.add_argument("--frames", type=int, default=24, help="frames per stage of the video throughput")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--tile-overlap", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "upscale_speed.md")
    args = ap.parse_args()

    torch.manual_seed(0)
    bf16 = cpu_has_native_bf16()
    lines = [(f"# Super-resolution speed (torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{torch.backends.cpu.get_cpu_capability()}, bf16 {'native' if bf16 else 'not native (skipped)'})"),
             "", f"Load average at the start: {', '.join(f'{v:.2f}' for v in os.getloadavg())}.", ""]

    def add(section: list[str]) -> None:
        lines.extend([*section, ""])
        print("\n".join(section), flush=True)

    add(espcn_section(args, bf16))
    add(latency_section(args, bf16))
    add(rss_section(args))
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
