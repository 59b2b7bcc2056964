"""Train cvkit's shipped super-resolution weights on T91 and report Set5 Y-PSNR / SSIM.

Regenerates a file in cvkit/assets/ with the training budget stated on the command line, e.g.
the shipped ESPCN x3:

    python benchmarks/train_sr.py --model espcn --scale 3 --epochs 120 --bf16 \
        --out cvkit/assets/espcn_x3.safetensors

(32.9 min on one busy CPU thread with native bf16: Set5 Y-PSNR 32.49 dB, SSIM 0.9043, best epoch 118;
65 epochs in 25.7 min gave 32.37 dB;
without --bf16 a step is ~2x slower here, and 45 fp32 epochs in 17 min gave 32.13 dB.)

Training runs on `cvkit.engine.train` (mmengine Runner) with on-the-fly MATLAB-bicubic LR
patches; validation on Set5 every epoch keeps the best epoch. The final line evaluates the
exported file again with `evaluate_folder` (Y channel, border = scale; bicubic for reference)
and prints the wall-clock time. ESPCN defaults follow the paper: Y channel, 17x17 LR patches,
MSE loss; Adam with a cosine schedule replaces the paper's SGD.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from cvkit.tasks.upscale.models import SR_MODELS
from cvkit.tasks.upscale.training import evaluate_folder, load_model, save_weights, train_upscale

from cvkit.engine.train import BEST, HISTORY
from cvkit.media.sinks import next_run_dir

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sr"
# Per-model defaults: loss, LR patch size, batch size, learning rate, patches per image per epoch.
RECIPES = {
    "espcn": {"loss": "mse", "patch_size": 17, "batch_size": 64, "lr": 1e-3, "repeat": 256},
    "cfsr": {"loss": "l1", "patch_size": 48, "batch_size": 16, "lr": 5e-4, "repeat": 8},
    "scnet_t": {"loss": "l1", "patch_size": 48, "batch_size": 16, "lr": 5e-4, "repeat": 8},
}


def export_best(model: str, scale: int, work_dir: Path, out: str) -> dict:
    """Write the best checkpoint of the run in `work_dir` to `out`; the run's epochs so far and
    its best epoch, as `train_upscale` reports them."""
    net = SR_MODELS.get(model)(scale=scale)
    net.load_state_dict(torch.load(work_dir / BEST, map_location="cpu", weights_only=True)["state_dict"])
    save_weights(net, out, name=model, args={"scale": scale})
    history = json.loads((work_dir / HISTORY).read_text())
    best = max(history, key=lambda h: h["psnr"])
    return {"epochs": len(history), "best_epoch": best["epoch"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="espcn", choices=sorted(RECIPES))
    ap.add_argument("--scale", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=65)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--patch-size", type=int, help="LR patch side")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--repeat", type=int, help="patches per training image per epoch")
    ap.add_argument("--data", default=str(DATA / "T91"))
    ap.add_argument("--val", default=str(DATA / "Set5"))
    ap.add_argument("--work-dir", help="default: a fresh runs/train_sr/<model>_x<scale>/exp<N>")
    ap.add_argument("--out", required=True, help="the exported .safetensors file")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for training (where native)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --work-dir")
    ap.add_argument("--json", help="also write the numbers to this file")
    ap.add_argument("--export-best", action="store_true",
                    help="do not train: export the best checkpoint of --work-dir so far (a run that is still "
                         "going or was stopped; `--resume` continues it) and evaluate it")
    a = ap.parse_args()
    if (a.resume or a.export_best) and not a.work_dir:
        ap.error("--resume and --export-best need the --work-dir of the run")

    torch.set_num_threads(a.threads)
    recipe = RECIPES[a.model]
    overrides = {"batch_size": a.batch_size, "patch_size": a.patch_size, "lr": a.lr, "repeat": a.repeat}
    train_cfg = {**recipe, **{k: v for k, v in overrides.items() if v is not None}}
    name = f"{a.model}_x{a.scale}"
    preset = {"name": name, "model": a.model, "args": {"scale": a.scale}, "train": train_cfg}
    work_dir = a.work_dir or next_run_dir("runs/train_sr", name)

    start = time.perf_counter()
    if a.export_best:
        summary = export_best(a.model, a.scale, Path(work_dir), a.out)
    else:
        summary = train_upscale(preset, a.data, a.val, work_dir=work_dir, epochs=a.epochs, resume=a.resume,
                                bf16=a.bf16, seed=a.seed, export=a.out)
    minutes = (time.perf_counter() - start) / 60

    net = load_model(a.out, scale=a.scale)
    res = evaluate_folder(net, a.val, a.scale, progress=False)
    bicubic = evaluate_folder(SR_MODELS.get("bicubic")(a.scale, net.in_channels), a.val, a.scale, progress=False)
    print(f"{name}: Set5 Y-PSNR {res['psnr']:.2f} dB, SSIM {res['ssim']:.4f} "
          f"(bicubic {bicubic['psnr']:.2f} dB / {bicubic['ssim']:.4f}); best epoch {summary['best_epoch']} "
          f"of {summary['epochs']}, " + (f"exported from {work_dir}" if a.export_best else
                                          f"{minutes:.1f} min on {a.threads} CPU threads{' (bf16)' if a.bf16 else ''}")
          + f"; weights {a.out}")
    if a.json:
        record = {"model": name, "set5_psnr_y": res["psnr"], "set5_ssim_y": res["ssim"],
                  "bicubic_psnr_y": bicubic["psnr"], "bicubic_ssim_y": bicubic["ssim"],
                  "epochs": summary["epochs"], "best_epoch": summary["best_epoch"],
                  "minutes": None if a.export_best else minutes,
                  "threads": a.threads, "bf16": a.bf16, "train": train_cfg, "per_image": res["per_image"]}
        Path(a.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
