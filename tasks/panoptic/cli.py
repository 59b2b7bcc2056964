"""`cvkit panoptic`, `cvkit train panoptic` and `cvkit eval panoptic`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from cvkit.cli import BATCH, BF16, JSON, MAXF, OUT, PROJECT, SAVE, SET, SHOW, SOURCE, STRIDE, WEIGHTS
from cvkit.errors import UsageError

DEFAULT_PRESET = "panoptic_deeplab_synthetic"
DATA = typer.Option(..., "--data", "-d", help="COCO panoptic folder (panoptic.json, panoptic/, images/; or "
                    "COCO's annotations/panoptic_SPLIT.json layout).")
GT_DATA = typer.Option(..., "--data", "-d", help="COCO panoptic ground-truth folder.")
VAL = typer.Option(None, "--val", help="Validation folder (per-image PQ each epoch).")
PRED = typer.Option(None, "--pred", help="Saved predictions (a `cvkit panoptic` output folder or any "
                    "panoptic.json + panoptic/): no model is run.")
TRAIN_PROJECT = typer.Option(Path("runs/train"), "--project", help="Parent of the run folders.")
WORK_DIR = typer.Option(None, "--work-dir", help="Run folder (default: a new exp).")
EXPORT = typer.Option(None, "--export", help="Where to write the trained weights.")


def write_coco_panoptic(out_dir: Path, categories: list[dict]) -> Path:
    """`panoptic.json` (COCO panoptic predictions: images, annotations, categories) from the run's
    predictions.jsonl; image ids are the PNG paths without extension."""
    images, annotations = [], []
    for line in (out_dir / "predictions.jsonl").read_text().splitlines():
        rec = json.loads(line)
        image_id = str(Path(rec["file_name"]).with_suffix(""))
        images.append({"id": image_id, "file_name": rec["source"], "height": rec["height"], "width": rec["width"]})
        annotations.append({"image_id": image_id, "file_name": rec["file_name"],
                            "segments_info": rec["segments_info"]})
    path = out_dir / "panoptic.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def panoptic(source: str = SOURCE,
             preset: str = typer.Option(DEFAULT_PRESET, "--preset", "-p", help="Preset name or YAML path."),
             weights: str | None = WEIGHTS, overrides: list[str] = SET, out: Path | None = OUT,
             project: Path = PROJECT, save: bool = SAVE, show: bool = SHOW, save_json: bool = JSON,
             batch: int = BATCH, vid_stride: int = STRIDE, max_frames: int | None = MAXF, bf16: bool = BF16):
    """Panoptic segmentation of images, folders and videos: an overlay (stuff in class colours,
    things per instance with outlines and labels, a legend) and COCO panoptic outputs: one PNG of
    segment ids per frame under `panoptic/` (id = R + 256 G + 256^2 B), `predictions.jsonl` with
    each frame's `segments_info`, and `panoptic.json` that panopticapi reads.

    Examples:

        cvkit panoptic examples/panoptic_scene.png
        cvkit panoptic clip.mp4 --out panoptic_run/
    """
    from cvkit.api import load_task
    from cvkit.engine.run import run
    from cvkit.media.sinks import next_run_dir

    if batch < 1 or vid_stride < 1 or (max_frames is not None and max_frames < 1):
        raise UsageError("--batch, --vid-stride and --max-frames must be positive")
    task = load_task(preset, weights=weights, overrides=overrides, task="panoptic")
    out_dir = None
    if save or save_json:
        out_dir = Path(out) if out is not None else next_run_dir(project, "panoptic")
        if save_json:
            task.png_dir = out_dir / "panoptic"
    summary = run(task, source, out=out_dir, project=project, save=save, show=show, save_json=save_json,
                  batch=batch, vid_stride=vid_stride, max_frames=max_frames, bf16=bf16,
                  progress=sys.stderr.isatty())
    if save_json:
        write_coco_panoptic(out_dir, task.categories)
    typer.echo(summary.line())
    if summary.interrupted:
        raise typer.Exit(130)


def train(data: Path = DATA,
          val: Path | None = VAL,
          preset: str = typer.Option(DEFAULT_PRESET, "--preset", "-p", help="Preset name or YAML path."),
          overrides: list[str] = SET,
          epochs: int | None = typer.Option(None, "--epochs", "-e"),
          batch_size: int | None = typer.Option(None, "--batch-size", "-b"),
          lr: float | None = typer.Option(None, "--lr"),
          project: Path = TRAIN_PROJECT,
          work_dir: Path | None = WORK_DIR,
          resume: bool = typer.Option(False, "--resume", help="Continue the run in --work-dir."),
          export: Path | None = EXPORT):
    """Train a Panoptic-DeepLab preset on COCO panoptic data (Adam, cosine schedule; losses: hard-pixel
    cross entropy, centre MSE, offset L1).

    Examples:

        cvkit train panoptic --data scenes/train --val scenes/val --epochs 10
        cvkit panoptic photo.jpg --weights runs/train/panoptic/exp/panoptic_deeplab_synthetic.safetensors
    """
    from cvkit.media.sinks import next_run_dir
    from cvkit.presets import load_preset

    from .training import train_panoptic

    p = load_preset(preset, overrides, task="panoptic")
    if resume and work_dir is None:
        raise UsageError("--resume needs --work-dir (the run folder to continue)")
    work_dir = work_dir or next_run_dir(project, "panoptic")
    summary = train_panoptic(p, data, val, work_dir=work_dir, epochs=epochs, batch_size=batch_size, lr=lr,
                             resume=resume, export=export, progress=sys.stderr.isatty())
    best = f", best per-image PQ {summary['best_value']:.3f} (epoch {summary['best_epoch']})" if summary["best_epoch"] else ""
    typer.echo(f"{summary['epochs']} epochs{best}, {summary['skipped_samples']} samples skipped; weights "
               f"{summary['weights']}; run in {work_dir}")


def print_pq(res: dict, categories: list[dict]) -> None:
    """The PQ / SQ / RQ table: All / Things / Stuff, then each class."""
    typer.echo(f"{'':<16}{'PQ':>7}{'SQ':>7}{'RQ':>7}{'N':>5}")
    for group in ("All", "Things", "Stuff"):
        r = res[group]
        typer.echo(f"{group:<16}{100 * r['pq']:>7.1f}{100 * r['sq']:>7.1f}{100 * r['rq']:>7.1f}{r['n']:>5}")
    typer.echo("")
    for c in categories:
        r = res["per_class"].get(c["id"]) or res["per_class"].get(str(c["id"]))
        kind = "thing" if c["isthing"] else "stuff"
        typer.echo(f"{c['name'][:15]:<16}{100 * r['pq']:>7.1f}{100 * r['sq']:>7.1f}{100 * r['rq']:>7.1f}  {kind}")


def evaluate(data: Path = GT_DATA, pred: Path | None = PRED,
             preset: str = typer.Option(DEFAULT_PRESET, "--preset", "-p", help="Preset name or YAML path."),
             weights: str | None = WEIGHTS, overrides: list[str] = SET):
    """PQ / SQ / RQ (All / Things / Stuff and per class), computed as panopticapi does.

    Examples:

        cvkit eval panoptic --data scenes/val
        cvkit eval panoptic --data scenes/val --pred runs/panoptic/exp
    """
    from .training import evaluate_panoptic, evaluate_predictions

    if pred is not None:
        import json as _json

        from .data import find_layout
        res = evaluate_predictions(pred, data)
        categories = _json.loads(find_layout(data)[0].read_text())["categories"]
        extra = f"{res['missing']} images without a prediction"
    else:
        from cvkit.api import load_task
        task = load_task(preset, weights=weights, overrides=overrides, task="panoptic")
        res = evaluate_panoptic(task.model, data, progress=sys.stderr.isatty())
        categories = task.categories
        extra = f"{res['skipped']} samples skipped"
    print_pq(res, categories)
    typer.echo(f"{res['images']} images, {extra}")


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command(rich_help_panel="Tasks")(panoptic)
    train_app.command("panoptic")(train)
    eval_app.command("panoptic")(evaluate)
