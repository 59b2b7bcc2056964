"""`cvkit segment`, `cvkit train segment` and `cvkit eval segment`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
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

PRESET = typer.Option("fcn8s_synthetic", "--preset", "-p", help="Preset name or YAML path.")
BACKBONE = typer.Option(None, "--backbone", help="Backbone for fcn8s/16s/32s (any in `cvkit backbones`).")
OSTRIDE = typer.Option(None, "--output-stride", help="8 or 16: dilate the last stages (ResNets with bottlenecks).")
NCLASSES = typer.Option(None, "--num-classes", help="Class count (re-initialises a classifier made for another).")
MODE = typer.Option("whole", "--mode", help="whole (one pass) or slide (overlapping windows, bounded memory).")
CROP = typer.Option(512, "--crop", help="Sliding-window size in pixels.")
WSTRIDE = typer.Option(341, "--stride", help="Sliding-window step in pixels.")
DATA = typer.Option(..., "--data", help="Dataset folder (images/ + labels/, VOC, Cityscapes or ADE20K).")
VAL = typer.Option(None, "--val", help="Validation dataset folder.")
SPLIT = typer.Option("val", "--split", help="Split of VOC/Cityscapes/ADE20K layouts.")
PRED = typer.Option(None, "--pred", help="Evaluate label PNGs in this folder, no model.")
TRAIN_PROJECT = typer.Option(Path("runs/train"), "--project", help="Parent of the numbered run folders.")
EVAL_PROJECT = typer.Option(Path("runs/eval"), "--project", help="Parent of the numbered run folders.")
AS_JSON = typer.Option(False, "--json", help="Print the results as JSON.")


def segment(source: str = SOURCE, preset: str = PRESET, backbone: str | None = BACKBONE,
            output_stride: int | None = OSTRIDE, num_classes: int | None = NCLASSES, mode: str = MODE,
            crop: int = CROP, stride: int = WSTRIDE,
            save_labels: bool = typer.Option(False, "--save-labels",
                                             help="Also write palette-indexed label PNGs to OUT/labels/."),
            weights: str | None = WEIGHTS, overrides: list[str] = SET, out: Path | None = OUT,
            project: Path = PROJECT, save: bool = SAVE, show: bool = SHOW, save_json: bool = JSON,
            batch: int = BATCH, vid_stride: int = STRIDE, max_frames: int | None = MAXF, bf16: bool = BF16):
    """Label every pixel of images, folders, videos and webcams: a colour overlay with a legend of the
    classes present, class pixel shares per frame in predictions.jsonl, and label PNGs with --save-labels.

    Examples:

        cvkit segment examples/segment_scene.png
        cvkit segment photo.jpg --preset fcn_resnet50_coco --save-labels
        cvkit segment street.png --preset fcn_resnet50_coco --mode slide --crop 512 --stride 341
        cvkit segment clip.mp4 --backbone resnet50 --output-stride 16 --weights runs/train/segment/exp/w.safetensors
    """
    label_dir = None
    if save_labels:
        if not save:
            raise UsageError("--save-labels writes beside the rendered images; drop --no-save")
        from cvkit.media.sinks import prepare_out_dir
        out = prepare_out_dir(out, project=project, name="segment")
        label_dir = out / "labels"
    run_task("segment", source, preset, weights, overrides, out, project, save, show, save_json, batch,
             vid_stride, max_frames, bf16, backbone=backbone, output_stride=output_stride, num_classes=num_classes,
             mode=mode, crop=crop, stride=stride, label_dir=label_dir)


def train_segment_cmd(
        data: Path = DATA,
        val: Path | None = VAL,
        preset: str = PRESET, backbone: str | None = BACKBONE, output_stride: int | None = OSTRIDE,
        num_classes: int | None = NCLASSES,
        epochs: int | None = typer.Option(None, "--epochs"), batch_size: int | None = typer.Option(None, "--batch"),
        crop: int | None = typer.Option(None, "--crop", help="Training crop size."),
        lr: float | None = typer.Option(None, "--lr"),
        weights: str | None = typer.Option(None, "--weights", "-w", help="Start from this checkpoint."),
        overrides: list[str] = SET, out: Path | None = OUT,
        project: Path = TRAIN_PROJECT,
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
        seed: int = typer.Option(0, "--seed"), workers: int = typer.Option(0, "--workers")):
    """Train a segmentation model (cross-entropy ignoring 255, aux loss 0.4) on a dataset folder.

    Examples:

        cvkit train segment --data scenes/ --num-classes 4 --epochs 20
        cvkit train segment --data VOC2012/ --backbone resnet50 --output-stride 8 --num-classes 21
    """
    from cvkit.media.sinks import next_run_dir
    from cvkit.presets import load_preset

    from .task import resolve_spec
    from .training import train_segment

    if resume and out is None:
        raise UsageError("--resume needs --out (the run folder to continue)")
    p = load_preset(preset, overrides, task="segment")
    spec, _, _ = resolve_spec(p, "none", backbone=backbone, output_stride=output_stride, num_classes=num_classes)
    spec["name"] = p["name"]
    work_dir = out if out is not None else next_run_dir(project, "segment")
    s = train_segment(spec, data, val, work_dir=work_dir, epochs=epochs, batch_size=batch_size, crop=crop, lr=lr,
                      train_cfg=p.get("train"), weights=weights, resume=resume, seed=seed, num_workers=workers,
                      progress=sys.stderr.isatty())
    best = f", best mIoU {s['mIoU']:.2f} (per image) at epoch {s['best_epoch']}" if s.get("mIoU") is not None else ""
    typer.echo(f"trained {s['epochs']} epochs{best}, {s['skipped']} samples skipped; weights in {s['weights']}")


def eval_segment_cmd(
        data: Path = DATA,
        split: str = SPLIT,
        pred: Path | None = PRED,
        preset: str = PRESET, backbone: str | None = BACKBONE, output_stride: int | None = OSTRIDE,
        num_classes: int | None = NCLASSES, mode: str = MODE, crop: int = CROP, stride: int = WSTRIDE,
        weights: str | None = WEIGHTS, overrides: list[str] = SET, out: Path | None = OUT,
        project: Path = EVAL_PROJECT,
        as_json: bool = AS_JSON):
    """mIoU, mAcc, aAcc and per-class IoU/Acc (mmseg's IoUMetric) on a dataset, plus a confusion-matrix PNG.

    Examples:

        cvkit eval segment --data scenes_val/
        cvkit eval segment --preset fcn_resnet50_coco --data VOC2012/ --json
        cvkit eval segment --pred runs/segment/exp/labels --data scenes_val/ --num-classes 4
    """
    from cvkit.media.sinks import prepare_out_dir
    from cvkit.presets import load_preset

    from .data import SegDataset
    from .task import SegmentTask, resolve_spec
    from .training import (
        dataset_classes,
        evaluate_predictions,
        evaluate_segment,
        format_table,
        save_confusion,
    )

    p = load_preset(preset, overrides, task="segment")
    missing = 0
    if pred is not None:
        spec, _, _ = resolve_spec(p, weights, num_classes=num_classes)
        n = spec["args"].get("num_classes")
        if n is None:
            raise UsageError("--pred needs the class count: pass --num-classes")
        dataset = SegDataset(data, n, split=split)
        classes = dataset_classes(dataset.layout, n, spec.get("classes"))
        metric, missing = evaluate_predictions(pred, dataset, progress=sys.stderr.isatty())
    else:
        task = SegmentTask.from_preset(p, weights, backbone=backbone, output_stride=output_stride,
                                       num_classes=num_classes, mode=mode, crop=crop, stride=stride)
        n, classes = task.classes.num_classes, task.classes
        dataset = SegDataset(data, n, split=split)
        if classes.name == "custom":
            classes = dataset_classes(dataset.layout, n)
        metric = evaluate_segment(task.model, dataset, mode=mode, crop=task.crop, stride=task.stride,
                                  progress=sys.stderr.isatty())
    out_dir = prepare_out_dir(out, project=project, name="segment")
    png = save_confusion(metric, classes, out_dir / "confusion_matrix.png")
    summary = metric.summary()
    per = metric.per_class()
    results = {**summary, "per_class": {c: {"IoU": _pct(i), "Acc": _pct(a)}
                                        for c, i, a in zip(classes.classes, per["IoU"], per["Acc"])},
               "images": len(dataset) - missing, "skipped": dataset.skipped + missing, "confusion_matrix": str(png)}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if as_json:
        typer.echo(json.dumps(results))
        return
    typer.echo(format_table(metric, classes))
    typer.echo(f"{results['images']} images, {results['skipped']} skipped; confusion matrix and results.json in {out_dir}")


def _pct(v: float) -> float | None:
    return None if np.isnan(v) else round(float(v) * 100, 2)


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command(rich_help_panel="Tasks")(segment)
    train_app.command("segment")(train_segment_cmd)
    eval_app.command("segment")(eval_segment_cmd)
