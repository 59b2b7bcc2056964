"""`cvkit lanes`, `cvkit train lanes` and `cvkit eval lanes`."""
from __future__ import annotations

import sys
from pathlib import Path

import typer

from cvkit.cli import BATCH, BF16, JSON, MAXF, OUT, PROJECT, SAVE, SET, SHOW, SOURCE, STRIDE, WEIGHTS
from cvkit.errors import UsageError

PRESET = typer.Option("scnn_synthetic", "--preset", "-p", help="Preset name or YAML path.")
DATA = typer.Option(..., "--data", "-d", help="Dataset folder (CULane list/ files or TuSimple json), "
                                              "or a list file / json file.")

VAL = typer.Option(None, "--val", help="Validation data (default: the val split of --data, if any).")
TRAIN_PROJECT = typer.Option(Path("runs/train"), "--project", help="Parent of the numbered run folders.")
WORK_DIR = typer.Option(None, "--work-dir", help="Run folder (with --resume: the one to continue).")
PRED = typer.Option(None, "--pred", help="Saved predictions to score instead of running a model: a folder of "
                                         ".lines.txt, a TuSimple json file, or cvkit's predictions.jsonl.")


def lanes(source: str = SOURCE, preset: str = PRESET,
          fmt: str | None = typer.Option(None, "--format", "-f",
                                            help="Also write 'culane' (.lines.txt per image) or 'tusimple' "
                                                 "(predictions_tusimple.json; run_time = the run's mean ms "
                                                 "per frame) files."),
          smooth: bool = typer.Option(False, "--smooth", help="Smooth lanes across video frames."),
          exist_thresh: float = typer.Option(0.5, "--exist-thresh", help="Existence probability to keep a lane."),
          prob_thresh: float = typer.Option(0.3, "--prob-thresh", help="Lane probability to keep a row's point."),
          weights: str | None = WEIGHTS, overrides: list[str] = SET, out: Path | None = OUT,
          project: Path = PROJECT, save: bool = SAVE, show: bool = SHOW, save_json: bool = JSON,
          batch: int = BATCH, vid_stride: int = STRIDE, max_frames: int | None = MAXF, bf16: bool = BF16):
    """Find lane markings in dash-cam images and videos (SCNN): lanes drawn in colour per slot,
    predictions.jsonl with polylines and existence scores.

    Examples:

        cvkit lanes examples/lanes_road.png
        cvkit lanes drive.mp4 --smooth
        cvkit lanes CULane/driver_37_30frame/ --preset scnn_culane -w scnn_culane.pth --format culane
    """
    from cvkit.api import load_task
    from cvkit.engine.run import run

    from .evaluate import read_records, write_culane, write_tusimple

    if batch < 1 or vid_stride < 1 or (max_frames is not None and max_frames < 1):
        raise UsageError("--batch, --vid-stride and --max-frames must be positive")
    if fmt is not None and not save_json:
        raise UsageError("--format is written from the JSON lines; drop --no-json")
    task = load_task(preset, weights=weights, overrides=overrides, task="lanes", format=fmt, smooth=smooth,
                     exist_thresh=exist_thresh, prob_thresh=prob_thresh)
    summary = run(task, source, out=out, project=project, save=save, show=show, save_json=save_json,
                  batch=batch, vid_stride=vid_stride, max_frames=max_frames, bf16=bf16,
                  progress=sys.stderr.isatty())
    if fmt is not None and summary.out_dir is not None:
        records = read_records(summary.out_dir / "predictions.jsonl")
        if fmt == "culane":
            n = write_culane(records, summary.out_dir)
            typer.echo(f"{n} .lines.txt files under {summary.out_dir}")
        else:
            ms = 1000 * summary.seconds / max(summary.frames, 1)
            path = summary.out_dir / "predictions_tusimple.json"
            n = write_tusimple(records, path, ms)
            typer.echo(f"{n} TuSimple lines in {path}")
    typer.echo(summary.line())
    if summary.interrupted:
        raise typer.Exit(130)


def train_lanes_cmd(data: Path = DATA, preset: str = PRESET,
                    val: Path | None = VAL,
                    epochs: int | None = typer.Option(None, "--epochs", "-e"),
                    batch_size: int | None = typer.Option(None, "--batch-size", "-b"),
                    lr: float | None = typer.Option(None, "--lr"),
                    weights: str = typer.Option("none", "--weights", "-w",
                                                help="Initial weights ('none': random; 'preset': the preset's)."),
                    overrides: list[str] = SET, project: Path = TRAIN_PROJECT,
                    name: str = typer.Option("lanes", "--name"),
                    work_dir: Path | None = WORK_DIR,
                    resume: bool = typer.Option(False, "--resume"), bf16: bool = BF16,
                    seed: int = typer.Option(0, "--seed"), workers: int = typer.Option(0, "--workers")):
    """Train SCNN on CULane- or TuSimple-style data (weighted CE + 0.1 existence BCE).

    Examples:

        python -m cvkit.tasks.lanes.synthetic runs/synthetic_lanes
        cvkit train lanes --data runs/synthetic_lanes --epochs 12
        cvkit train lanes --data CULane/ --preset scnn_culane --batch-size 8
    """
    from cvkit.media.sinks import next_run_dir
    from cvkit.presets import load_preset

    from .training import train_lanes

    p = load_preset(preset, overrides, task="lanes")
    if resume and work_dir is None:
        raise UsageError("--resume needs --work-dir (the run folder to continue)")
    run_dir = work_dir or next_run_dir(project, name)
    s = train_lanes(p, data, work_dir=run_dir, val=val, weights=None if weights == "preset" else weights,
                    epochs=epochs, batch_size=batch_size, lr=lr, resume=resume, bf16=bf16, seed=seed,
                    num_workers=workers, progress=sys.stderr.isatty())
    f1 = f", best F1 {s['F1']:.4f} (epoch {s['best_epoch']})" if "F1" in s else ""
    typer.echo(f"trained {s['epochs']} epochs{f1}, {s['skipped_samples']} samples skipped; "
               f"weights in {s.get('weights')}")


def eval_lanes_cmd(data: Path = DATA, preset: str = PRESET, weights: str | None = WEIGHTS,
                   pred: Path | None = PRED,
                   split: str = typer.Option("val", "--split", help="train or val"),
                   protocol: str | None = typer.Option(None, "--protocol",
                                                          help="culane or tusimple (where --data has both)."),
                   overrides: list[str] = SET, batch: int = BATCH):
    """CULane precision / recall / F1 or TuSimple accuracy / FP / FN.

    Examples:

        cvkit eval lanes --data runs/synthetic_lanes
        cvkit eval lanes --preset scnn_culane -w scnn_culane.pth --data CULane/
        cvkit eval lanes --pred runs/lanes/exp --data CULane/list/test.txt
    """
    from .data import find_annotations
    from .evaluate import evaluate_model, evaluate_predictions

    if split not in ("train", "val"):
        raise UsageError(f"--split must be train or val, not '{split}'")
    find_annotations(data, split, protocol)  # a missing or unknown dataset fails before any model is built
    if pred is not None:
        r = evaluate_predictions(pred, data, split=split, protocol=protocol)
    else:
        from cvkit.nn import deploy
        from cvkit.presets import load_preset

        from .task import build_model, load_model_weights

        p = load_preset(preset, overrides, task="lanes")
        model = deploy(load_model_weights(build_model(p), p, weights))
        r = evaluate_model(model, data, split=split, protocol=protocol, batch_size=batch,
                           progress=sys.stderr.isatty())
    typer.echo(format_metrics(r))


def format_metrics(r: dict) -> str:
    """One line: the protocol's numbers, images and skipped samples."""
    if r["protocol"] == "culane":
        body = (f"CULane precision {r['precision']:.4f} recall {r['recall']:.4f} F1 {r['F']:.4f} "
                f"(tp {r['tp']} fp {r['fp']} fn {r['fn']})")
    else:
        body = f"TuSimple accuracy {r['Accuracy']:.4f} FP {r['FP']:.4f} FN {r['FN']:.4f}"
    return f"{body} on {r['images']} images, {r['skipped']} skipped"


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command(rich_help_panel="Tasks")(lanes)
    train_app.command("lanes")(train_lanes_cmd)
    eval_app.command("lanes")(eval_lanes_cmd)
