"""Backbone throughput: eager vs deploy vs channels_last vs bf16 autocast, against a matmul peak.

Images/s at batch 1 and 8 and at 224x224 and 640x384 (HxW 384x640), and the achieved GFLOP/s
(torch's flop counter, 2 FLOPs per multiply-add) against this machine's fp32 matmul peak measured
in the same run. Ratios (deploy / eager, ...) are what to read: absolute numbers on shared
machines are noisy.

    python benchmarks/backbones.py                       # one small variant per family
    python benchmarks/backbones.py --names convnext_t lsnet_t --sizes 224 --batches 1
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cvkit import create_backbone
from cvkit.hardware import cpu_has_native_bf16
from cvkit.nn import count_gflops, deploy

DEFAULT = ["inceptionnext_atto", "convnext_atto", "convformer_s18", "unireplknet_a", "lsnet_t",
           "fasternet_t0", "hornet_t_7x7", "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v1"]
SIZES = {"224": (224, 224), "640x384": (384, 640)}


def bench(fn, x, min_time: float) -> float:
    """Seconds per call: warm up, then repeat for at least `min_time` seconds."""
    with torch.inference_mode():
        fn(x)
        n, start = 0, time.perf_counter()
        while True:
            fn(x)
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time and n >= 2:
                return elapsed / n


def best_of(fns: dict, inputs: dict, rounds: int, min_time: float) -> dict:
    """Seconds per call of each `fns[k](inputs[k])`: the best of `rounds` interleaved rounds of
    `bench`, so that a burst of load from other jobs does not decide a ratio."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], bench(fn, inputs[name], min_time))
    return best


def write_report(path: Path, lines: list[str]) -> None:
    """Write a results file (Markdown lines), creating its folder, and say where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"written to {path}")


def matmul_peak(min_time: float) -> float:
    """fp32 GFLOP/s of a 2048^2 matmul: this machine's practical limit."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048 ** 3 / bench(lambda _: a @ b, None, min_time) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", nargs="*", default=DEFAULT)
    ap.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "backbones.md")
    args = ap.parse_args()

    torch.manual_seed(0)
    peak = matmul_peak(args.min_time)
    bf16 = cpu_has_native_bf16()
    title = (f"# Backbone throughput ({torch.__version__}, {torch.get_num_threads()} threads, "
             f"{torch.backends.cpu.get_cpu_capability()})")
    peak_line = (f"fp32 matmul peak measured in this run: {peak:.1f} GFLOP/s. "
                 f"bf16: {'native' if bf16 else 'not native (skipped)'}.")
    header = ("| backbone | size | batch | eager img/s | deploy img/s | deploy+CL img/s | bf16 img/s "
              "| deploy/eager | GFLOP/s (deploy) | % of peak |")
    lines = [title, "", peak_line, "", header,
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in args.names:
        model = create_backbone(name).eval()
        fast = deploy(model)
        for size_name in args.sizes:
            h, w = SIZES[size_name]
            gflop = count_gflops(fast, (h, w), macs=False)
            for b in args.batches:
                x = torch.randn(b, 3, h, w)
                t_eager = bench(model, x, args.min_time)
                t_deploy = bench(fast, x, args.min_time)
                fast_cl = fast.to(memory_format=torch.channels_last)
                t_cl = bench(fast_cl, x.contiguous(memory_format=torch.channels_last), args.min_time)
                fast.to(memory_format=torch.contiguous_format)
                t_bf16 = None
                if bf16:
                    def run_bf16(inp, net=fast):
                        with torch.autocast("cpu", dtype=torch.bfloat16):
                            return net(inp)
                    t_bf16 = bench(run_bf16, x, args.min_time)
                achieved = gflop * b / t_deploy
                row = (f"| {name} | {size_name} | {b} | {b / t_eager:.1f} | {b / t_deploy:.1f} | {b / t_cl:.1f} | "
                       + (f"{b / t_bf16:.1f}" if t_bf16 else "-")
                       + f" | {t_eager / t_deploy:.2f} | {achieved:.1f} | {100 * achieved / peak:.0f}% |")
                print(row, flush=True)
                lines.append(row)
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
