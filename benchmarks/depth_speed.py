"""FastDepth speed and memory, as ratios measured in one run.

1. Frames/s at 224x224, batch 1: eager (BN as built) vs deploy (Conv+BN fused) vs deploy +
   channels_last vs deploy + bf16 autocast (where the CPU has native bf16), each the best of
   interleaved rounds, and the achieved GFLOP/s of the fastest fp32 form against a 2048^2 fp32
   matmul measured in the same run. Models: the paper's MobileNet-NNConv5(depthwise)-SkipAdd
   before pruning (0.74 GMACs); a uniformly thinned copy at x0.7 width, a stand-in with the MACs
   of the NetAdapt-pruned release (0.37 GMACs; its per-layer widths are only in that checkpoint);
   the shipped `fastdepth_synthetic` (x0.25). The paper's figure, 37 ms per frame on a Jetson TX2
   CPU, is for the pruned model compiled with TVM.
2. The depth task's own forward on its preprocessed batch (`fastdepth_nyu`, random weights):
   frames arrive NHWC, so the batch is channels_last and the deployed model runs the
   channels_last kernels without being converted.
3. RSS over a 2000-frame synthetic 640x360 video through a full `run` of that task (decode +
   inference + render + H.264 + JSON lines): RSS at frame 200 and its peak from there to the
   last frame; goal < 50 MB growth.

    python benchmarks/depth_speed.py --out benchmarks/results/depth_speed.md
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from backbones import best_of, matmul_peak, write_report  # benchmarks/backbones.py
from cvkit.tasks.depth.fastdepth import DECODER_WIDTHS, fastdepth_mobilenet
from cvkit.tasks.depth.models import build_depth_model
from pipeline import make_video, rss_growth  # benchmarks/pipeline.py

from cvkit.api import load_task
from cvkit.backbones.mobilenet_v1 import BLOCKS
from cvkit.hardware import cpu_has_native_bf16
from cvkit.media import Frame
from cvkit.nn import count_gflops, deploy
from cvkit.nn.layers import make_divisible
from cvkit.presets import load_preset

TX2_CPU_MS = 37.0  # paper / README: pruned FastDepth (0.37 GMACs), TVM-compiled, Jetson TX2 CPU
ENCODER_WIDTHS = (32,) + tuple(b[1] for b in BLOCKS)


def thinned(multiplier: float):
    """FastDepth with every encoder and decoder width times `multiplier` (multiples of 8); the
    additive skips keep matching channels, so no projections are added."""
    return fastdepth_mobilenet([make_divisible(c * multiplier) for c in ENCODER_WIDTHS],
                               [make_divisible(c * multiplier) for c in DECODER_WIDTHS])


MODELS = {
    "FastDepth (paper, unpruned)": fastdepth_mobilenet,
    "FastDepth x0.7 (pruned-MACs stand-in)": lambda: thinned(0.7),
    "fastdepth_synthetic (shipped, x0.25)": lambda: build_depth_model(load_preset("fastdepth_synthetic")),
}


def speed_rows(args, peak: float, bf16: bool) -> list[str]:
    """One markdown row per model of MODELS (batch 1, 224x224)."""
    rows = []
    x = torch.randn(1, 3, 224, 224)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for name, build in MODELS.items():
        model = build().eval()
        fast = deploy(model)
        fast_cl = deploy(model).to(memory_format=torch.channels_last)
        fns = {"eager": model, "deploy": fast, "deploy+CL": fast_cl}
        inputs = {"eager": x, "deploy": x, "deploy+CL": x_cl}
        if bf16:
            def run_bf16(inp, net=fast_cl):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return net(inp)
            fns["bf16"], inputs["bf16"] = run_bf16, x_cl
        t = best_of(fns, inputs, args.rounds, args.min_time)
        gflop = count_gflops(fast, (224, 224), macs=False)
        best = min(t["deploy"], t["deploy+CL"])
        achieved = gflop / best
        row = (f"| {name} | {gflop / 2:.3f} | {1 / t['eager']:.1f} | {1 / t['deploy']:.1f} | {1 / t['deploy+CL']:.1f} | "
               + (f"{1 / t['bf16']:.1f}" if bf16 else "-")
               + f" | {t['eager'] / t['deploy']:.2f} | {t['deploy'] / t['deploy+CL']:.2f} | {1000 * best:.1f} | "
               f"{TX2_CPU_MS / (1000 * best):.1f}x | {achieved:.1f} | {100 * achieved / peak:.0f}% |")
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each is kept")
    ap.add_argument("--frames", type=int, default=2000, help="frames of the long video")
    ap.add_argument("--first", type=int, default=200, help="frame whose RSS is the baseline")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "depth_speed.md")
    args = ap.parse_args()

    torch.manual_seed(0)
    peak = max(matmul_peak(args.min_time) for _ in range(args.rounds))
    bf16 = cpu_has_native_bf16()
    title = (f"# FastDepth speed (torch {torch.__version__}, {torch.get_num_threads()} threads, "
             f"{torch.backends.cpu.get_cpu_capability()}, batch 1, 224x224)")
    setting = (f"Load average at the start: {', '.join(f'{v:.2f}' for v in os.getloadavg())}. fp32 matmul "
               f"peak measured in this run (best of {args.rounds}): {peak:.1f} GFLOP/s. "
               f"bf16: {'native' if bf16 else 'not native (skipped)'}.")
    paper = (f"Paper: {TX2_CPU_MS:.0f} ms per frame ({1000 / TX2_CPU_MS:.0f} fps) on a Jetson TX2 CPU, for the "
             "NetAdapt-pruned model (0.37 GMACs) compiled with TVM; 'vs TX2' = 37 ms / this machine's best ms.")
    header = ("| model | GMACs | eager fps | deploy fps | deploy+CL fps | deploy+CL bf16 fps | deploy/eager "
              "| CL/deploy | best fp32 ms | vs TX2 | GFLOP/s (best fp32) | % of matmul peak |")
    lines = [title, "", setting, paper, "", header,
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += speed_rows(args, peak, bf16)

    task = load_task("fastdepth_nyu", weights="none")
    rng = np.random.default_rng(0)
    batch, _ = task.preprocess([Frame(image=rng.integers(0, 256, (360, 640, 3), dtype=np.uint8), source="probe")])
    t_task = best_of({"task": task.forward}, {"task": batch}, args.rounds, args.min_time)["task"]
    lines += ["", (f"Depth task forward (`fastdepth_nyu`, deployed) on its own preprocessed 224x224 batch "
                   f"(channels_last: {batch.is_contiguous(memory_format=torch.channels_last)}): {1 / t_task:.1f} fps.")]
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "long.mp4", args.frames, 640, 360)
        r = rss_growth(task, video, Path(tmp) / "out", first=args.first)
    at, peak_key = f"rss_mb_at_{args.first}", f"peak_rss_mb_{args.first}_to_{r['frames']}"
    lines += ["", (f"Memory, `fastdepth_nyu` (unpruned, random weights) on a {r['frames']}-frame 640x360 video, "
                   f"full run at {r['fps']:.1f} fps: RSS {r[at]:.0f} MB at frame {args.first}, peak "
                   f"{r[peak_key]:.0f} MB up to frame {r['frames']}: growth {r['growth_mb']:.1f} MB "
                   f"(goal < 50 MB)."), "", "```json", json.dumps(r), "```"]
    print("\n".join(lines[-6:]))
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
