"""`cvkit depth`, `cvkit train depth` and `cvkit eval depth`."""
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

DEFAULT_PRESET = "fastdepth_synthetic"
PRESET = typer.Option(DEFAULT_PRESET, "--preset", "-p", help="Preset name or YAML path.")
VALID = typer.Option(None, "--valid",
                     help="Pixels evaluated: 'fastdepth' (target > 0 or prediction > 0, the official "
                          "convention; default for .h5 data) or 'target' (target > 0; default for folders).")


def depth(source: str = SOURCE, preset: str = PRESET,
          save_raw: bool = typer.Option(False, "--save-raw",
                                        help="Also write each depth map next to the rendered output."),
          raw_format: str = typer.Option("png", "--raw-format",
                                         help="png: 16-bit millimetres (NYU/TUM); npy: float32 metres."),
          side_by_side: bool = typer.Option(False, "--side-by-side", help="Input and depth side by side."),
          value_range: tuple[float, float] | None = typer.Option(
              None, "--range", help="Fixed colour scale NEAR FAR in metres (default: per frame)."),
          weights: str | None = WEIGHTS, overrides: list[str] = SET, out: Path | None = OUT,
          project: Path = PROJECT, save: bool = SAVE, show: bool = SHOW, save_json: bool = JSON,
          batch: int = BATCH, vid_stride: int = STRIDE, max_frames: int | None = MAXF, bf16: bool = BF16):
    """Depth in metres from single images, folders and videos: a colour map (near = warm) with
    a legend, PNG for stills and H.264 for videos (audio kept).

    Examples:

        cvkit depth examples/depth_scene.png
        cvkit depth photos/ --save-raw --side-by-side
        cvkit depth clip.mp4 --range 0.5 8 --save-raw --raw-format npy
    """
    if value_range is not None and None in value_range:
        value_range = None
    raw_dir = None
    if save_raw:
        from cvkit.media.sinks import next_run_dir

        from .task import RAW_FORMATS

        if raw_format not in RAW_FORMATS:
            raise UsageError(f"--raw-format must be one of {', '.join(RAW_FORMATS)}; got '{raw_format}'")

        out = out if out is not None else next_run_dir(project, "depth")
        raw_dir = out
    run_task("depth", source, preset, weights, overrides, out, project, save, show, save_json, batch,
             vid_stride, max_frames, bf16, save_raw=save_raw, raw_format=raw_format, raw_dir=raw_dir,
             side_by_side=side_by_side, value_range=tuple(value_range) if value_range else None)


TRAIN_DATA = typer.Option(..., "--data", "-d",
                          help="Folder of .h5 files (NYU; train/ + val/ inside) or rgb/ + depth/.")
TRAIN_VAL = typer.Option(None, "--val", help="Validation folder (same layouts).")
TRAIN_PROJECT = typer.Option(Path("runs/train"), "--project", help="Parent of the numbered run folders.")
WORK_DIR = typer.Option(None, "--work-dir", help="Run folder (default: PROJECT/NAME/exp, exp2, ...).")
EVAL_DATA = typer.Option(..., "--data", "-d", help="Ground truth (.h5 files or rgb/ + depth/).")
PRED = typer.Option(None, "--pred", help="Folder of saved predictions (16-bit PNG mm or .npy m); no model is run.")
JSON_PATH = typer.Option(None, "--json", help="Also write the results here.")
EVAL_OUT = typer.Option(None, "--out", "-o", help="Folder for worst_frames.png (default runs/eval/depth/exp).")
EVAL_PROJECT = typer.Option(Path("runs/eval"), "--project", help="Parent of the numbered run folders.")


def train_depth_cmd(data: Path = TRAIN_DATA, val: Path | None = TRAIN_VAL, preset: str = PRESET,
                    overrides: list[str] = SET,
                    weights: str | None = typer.Option(
                        None, "--weights", "-w",
                        help="Initial weights (default: the preset's own, if any); 'none' = from scratch."),
                    epochs: int | None = typer.Option(None, "--epochs"),
                    batch_size: int | None = typer.Option(None, "--batch-size", "-b"),
                    lr: float | None = typer.Option(None, "--lr"),
                    min_items: int | None = typer.Option(None, "--min-items",
                                                         help="Repeat a small dataset to this many samples per epoch."),
                    project: Path = TRAIN_PROJECT, name: str = typer.Option("depth", "--name"),
                    work_dir: Path | None = WORK_DIR,
                    resume: bool = typer.Option(False, "--resume", help="Continue the run in --work-dir."),
                    workers: int = typer.Option(0, "--workers"), bf16: bool = BF16, seed: int = typer.Option(0)):
    """Train a depth model (L1 on valid pixels, FastDepth's augmentations); exports safetensors.

    Examples:

        cvkit train depth --data nyudepthv2/ --preset fastdepth_nyu --weights none
        cvkit train depth --data synth/train --val synth/val --preset fastdepth_synthetic --epochs 5
    """
    from cvkit.media.sinks import next_run_dir
    from cvkit.presets import load_preset

    from .training import train_depth

    if resume and work_dir is None:
        raise UsageError("--resume needs the --work-dir of the run to continue")
    p = load_preset(preset, overrides, task="depth")
    wd = work_dir if work_dir is not None else next_run_dir(project, name)
    s = train_depth(p, data, val, work_dir=wd, weights=weights, epochs=epochs, batch_size=batch_size, lr=lr,
                    min_items=min_items, resume=resume, bf16=bf16, seed=seed, num_workers=workers,
                    progress=sys.stderr.isatty())
    best = f", best delta1 {s['delta1']:.3f} rmse {s['rmse'] / 1000:.3f} m (epoch {s['best_epoch']})" \
        if s.get("best_epoch") else ""
    typer.echo(f"trained {s['epochs']} epochs{best}; {s['skipped_samples']} samples skipped; "
               f"weights {s.get('weights')}; run in {wd}")


def eval_depth_cmd(data: Path = EVAL_DATA, preset: str = PRESET, pred: Path | None = PRED,
                   weights: str | None = WEIGHTS, overrides: list[str] = SET, valid: str | None = VALID,
                   worst: int = typer.Option(4, "--worst", help="Frames in the error-map image."),
                   json_path: Path | None = JSON_PATH, out: Path | None = EVAL_OUT, project: Path = EVAL_PROJECT):
    """RMSE, MAE, AbsRel, log10 and delta1-3 (FastDepth's definitions) on a dataset, and an
    error-map image of the worst frames.

    Examples:

        cvkit eval depth --data synth/val --preset fastdepth_synthetic
        cvkit eval depth --data synth/val --pred runs/depth/exp --json results.json
    """
    from cvkit.media.sinks import next_run_dir, prepare_out_dir

    from .training import evaluate_model, evaluate_predictions

    if worst < 0:
        raise UsageError("--worst must be >= 0")
    out_dir = prepare_out_dir(out, project=project, name="depth") if out is not None else next_run_dir(project, "depth")
    progress = sys.stderr.isatty()
    if pred is not None:
        res = evaluate_predictions(pred, data, valid=valid, out_dir=out_dir, worst=worst, progress=progress)
    else:
        from cvkit.api import load_task

        task = load_task(preset, weights=weights, overrides=overrides, task="depth")
        res = evaluate_model(task.model, task.preset, data, valid=valid, out_dir=out_dir, worst=worst,
                             progress=progress)
    typer.echo(f"{res['frames']} frames, {len(res['skipped'])} skipped, valid pixels: {res['valid']}")
    typer.echo(f"RMSE {res['rmse_m']:.4f} m  MAE {res['mae_m']:.4f} m  AbsRel {res['absrel']:.4f}  "
               f"log10 {res['lg10']:.4f}  delta1 {res['delta1']:.4f}  delta2 {res['delta2']:.4f}  "
               f"delta3 {res['delta3']:.4f}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(res, indent=1, default=str) + "\n")
    typer.echo(f"worst frames: {res['worst_frames']}" if res["worst_frames"] else f"outputs in {out_dir}")


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command(rich_help_panel="Tasks")(depth)
    train_app.command("depth")(train_depth_cmd)
    eval_app.command("depth")(eval_depth_cmd)
