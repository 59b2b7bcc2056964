"""`cvkit upscale` (and, with the training engine, `cvkit train/eval upscale`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from cvkit.cli import (
    BATCH,
    BF16,
    JSON,
    MAXF,
    OUT,
    PROJECT,
    SAVE,
    SET,
    SHOW,
    SOURCE,
    STRIDE,
    WEIGHTS,
    run_task,
)
from cvkit.errors import UsageError


def upscale(source: str = SOURCE,
            preset: str = typer.Option("espcn_x3", "--preset", "-p", help="Preset name or YAML path."),
            scale: float | None = typer.Option(None, "--scale", "-s",
                                                  help="Check (or, for bicubic, set) the scale."),
            tile: int | None = typer.Option(None, "--tile", help="Tile size in input pixels (bounds memory)."),
            tile_overlap: int = typer.Option(16, "--tile-overlap", help="Context pixels around each tile."),
            weights: str | None = WEIGHTS, overrides: list[str] = SET, out: Path | None = OUT,
            project: Path = PROJECT, save: bool = SAVE, show: bool = SHOW, save_json: bool = JSON,
            batch: int = BATCH, vid_stride: int = STRIDE, max_frames: int | None = MAXF,
            bf16: bool = BF16):
    """Super-resolve images, folders and videos (PNG for stills, H.264 for videos).

    Examples:

        cvkit upscale examples/upscale/ --preset espcn_x3
        cvkit upscale photo.jpg --preset bicubic_x4 --tile 256
        cvkit upscale clip.mp4 --preset espcn_x3 --out upscaled/
    """
    run_task("upscale", source, preset, weights, overrides, out, project, save, show, save_json, batch,
             vid_stride, max_frames, bf16, scale=scale, tile=tile, tile_overlap=tile_overlap)


def train(preset: str = typer.Option(..., "--preset", "-p", help="Preset naming the model and scale."),
          data: str = typer.Option(..., "--data", help="Folder of high-resolution training images."),
          val: str | None = typer.Option(None, "--val", help="Folder of HR images validated each epoch."),
          epochs: int | None = typer.Option(None, help="Epochs (default: the preset's train section)."),
          batch_size: int | None = typer.Option(None, "--batch-size", help="Patches per step and process."),
          patch_size: int | None = typer.Option(None, "--patch-size", help="HR patch side."),
          lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (Adam)."),
          resume: str | None = typer.Option(None, "--resume", help="Run folder to continue after a kill."),
          overrides: list[str] = SET, project: Path = PROJECT, bf16: bool = BF16,
          seed: int = typer.Option(0, help="Random seed.")):
    """Train an SR model on a folder of HR images (LR patches made on the fly with MATLAB bicubic).

    Examples:

        cvkit train upscale --preset espcn_x3 --data T91/ --val Set5/
        cvkit train upscale --preset espcn_x3 --data T91/ --resume runs/train/upscale/exp
        torchrun --nproc-per-node 2 -m cvkit train upscale --preset espcn_x3 --data T91/
    """
    from cvkit.media.sinks import next_run_dir
    from cvkit.presets import load_preset

    from .training import train_upscale

    p = load_preset(preset, overrides, task="upscale")
    if p["model"] == "bicubic":
        raise UsageError("bicubic has nothing to train; pick a preset with a learned model")
    work_dir = Path(resume) if resume is not None else next_run_dir(Path(project) / "train", "upscale")
    summary = train_upscale(p, data, val, work_dir=work_dir, epochs=epochs, batch_size=batch_size,
                            patch_size=patch_size, lr=lr, resume=resume is not None, bf16=bf16, seed=seed,
                            progress=sys.stderr.isatty())
    if summary.get("weights"):
        best = (f"; best {summary['best_key']} {summary['best_value']:.3f} at epoch {summary['best_epoch']}"
                if summary.get("best_epoch") else "")
        typer.echo(f"trained {summary['epochs']} epochs{best}; weights {summary['weights']}, "
                   f"run folder {work_dir}")


def evaluate(preset: str = typer.Option(..., "--preset", "-p", help="Preset name or YAML path."),
             data: str = typer.Option(..., "--data", help="Folder of HR test images (e.g. Set5)."),
             scale: int | None = typer.Option(None, "--scale", "-s", help="Scale to evaluate (checked)."),
             weights: str | None = WEIGHTS, overrides: list[str] = SET,
             json_out: str | None = typer.Option(None, "--json", help="Also write the numbers here.")):
    """Y-channel PSNR / SSIM on a folder of HR images, border cropped by the scale (BasicSR).

    A luma model ("y": ESPCN, bicubic presets) follows the SRCNN/ESPCN protocol behind the
    published tables; an RGB model gets uint8 RGB LR (BasicSR benchmark convention).

    Example: `cvkit eval upscale --preset bicubic_x3 --data Set5/` (30.39 dB / 0.8682)
    """
    from cvkit.api import load_task

    from .training import evaluate_folder

    task = load_task(preset, weights=weights, overrides=overrides, task="upscale",
                     scale=float(scale) if scale else None)
    model = task.model
    res = evaluate_folder(model, data, int(model.scale), progress=sys.stderr.isatty())
    if not res["per_image"]:
        raise UsageError(f"no readable images in {data}")
    width = max(len(r["name"]) for r in res["per_image"])
    typer.echo(f"{'image':<{width}}  PSNR(dB)  SSIM")
    for r in res["per_image"]:
        typer.echo(f"{r['name']:<{width}}  {r['psnr']:8.4f}  {r['ssim']:.4f}")
    typer.echo(f"{'mean':<{width}}  {res['psnr']:8.4f}  {res['ssim']:.4f}   "
               f"(x{model.scale}, {model.in_channels} protocol, {len(res['per_image'])} images"
               + (f", {res['skipped']} skipped" if res["skipped"] else "") + ")")
    if json_out is not None:
        payload = {"preset": task.preset.get("name"), "scale": model.scale, "protocol": model.in_channels,
                   "psnr": res["psnr"], "ssim": res["ssim"], "per_image": res["per_image"],
                   "skipped": res["skipped"]}
        Path(json_out).write_text(json.dumps(payload, indent=1))


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command(rich_help_panel="Tasks")(upscale)
    train_app.command("upscale")(train)
    eval_app.command("upscale")(evaluate)
