"""`cvkit detect`, `cvkit train detect`, `cvkit eval detect` and `cvkit data check|shapes`."""

# ruff: noqa: B008, UP006, UP035, UP045 - typer reads options from defaults (as cvkit/cli.py)
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from cvkit.cli import BATCH, BF16, JSON, MAXF, OUT, PROJECT, SAVE, SET, SHOW, SOURCE, STRIDE, WEIGHTS
from cvkit.errors import UsageError

DEFAULT_PRESET = "retinanet_shapes"
PRESET = typer.Option(DEFAULT_PRESET, "--preset", "-p", help="Preset name or YAML path.")
BACKBONE = typer.Option(
    None, "--backbone", help="Any backbone (`cvkit backbones`); replaces the preset's model."
)
NECK = typer.Option(
    None, "--neck", help="fpn, rcnet, sepc, sepc_lite (after an FPN), ssd_extra, ssdlite_extra."
)
HEAD = typer.Option(None, "--head", help="retinanet, ssd or ssdlite.")


def _write_json(obj, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)
    return path


def detect(
    source: str = SOURCE,
    preset: str = PRESET,
    backbone: Optional[str] = BACKBONE,
    neck: Optional[str] = NECK,
    head: Optional[str] = HEAD,
    conf: Optional[float] = typer.Option(None, "--conf", help="Score threshold (default: the head's)."),
    iou: Optional[float] = typer.Option(None, "--iou", help="NMS IoU threshold."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Only these classes: 'person,car'."),
    max_det: Optional[int] = typer.Option(None, "--max-det", help="Detections kept per image."),
    weights: Optional[str] = WEIGHTS,
    overrides: List[str] = SET,
    out: Optional[Path] = OUT,
    project: Path = PROJECT,
    save: bool = SAVE,
    show: bool = SHOW,
    save_json: bool = JSON,
    batch: int = BATCH,
    vid_stride: int = STRIDE,
    max_frames: Optional[int] = MAXF,
    bf16: bool = BF16,
):
    """Detect objects in images, folders, videos and streams: annotated images/videos,
    predictions.jsonl (one line per frame) and coco_results.json (COCO results format).

    Examples:

        cvkit detect examples/detect_shapes.jpg
        cvkit detect street.mp4 --preset retinanet_r50_fpn --classes person,car --conf 0.4
        cvkit detect photo.jpg --backbone convnext_t --neck rcnet --head retinanet --weights my.safetensors
    """
    from cvkit.api import load_task
    from cvkit.engine.run import run

    if batch < 1 or vid_stride < 1 or (max_frames is not None and max_frames < 1):
        raise UsageError("--batch, --vid-stride and --max-frames must be positive")
    task = load_task(
        preset,
        weights=weights,
        overrides=overrides,
        task="detect",
        backbone=backbone,
        neck=neck,
        head=head,
        conf=conf,
        iou=iou,
        classes=classes,
        max_det=max_det,
    )
    summary = run(
        task,
        source,
        out=out,
        project=project,
        save=save,
        show=show,
        save_json=save_json,
        batch=batch,
        vid_stride=vid_stride,
        max_frames=max_frames,
        bf16=bf16,
        progress=sys.stderr.isatty(),
    )
    if save_json and summary.out_dir is not None:
        _write_json(task.records, Path(summary.out_dir) / "coco_results.json")
    typer.echo(summary.line())
    if summary.interrupted:
        raise typer.Exit(130)


def train_detect_cmd(
    data: Path = typer.Option(
        ..., "--data", help="Training set: COCO (annotations.json + images/) or VOC folder."
    ),
    val: Optional[Path] = typer.Option(
        None, "--val", help="Validation set (same format); keeps the best epoch."
    ),
    preset: str = PRESET,
    backbone: Optional[str] = BACKBONE,
    neck: Optional[str] = NECK,
    head: Optional[str] = HEAD,
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    imgsz: Optional[int] = typer.Option(None, "--imgsz", help="Input size (default: the preset's)."),
    augment: Optional[str] = typer.Option(
        None, "--augment", help="'ssd', 'retinanet' or 'none' (default: the head's)."
    ),
    split: Optional[str] = typer.Option(None, "--split", help="VOC: ImageSets/Main/<split>.txt of --data."),
    overrides: List[str] = SET,
    project: Path = typer.Option(Path("runs/train"), "--project"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder."),
    workers: int = typer.Option(0, "--workers"),
    seed: int = typer.Option(0, "--seed"),
    bf16: bool = BF16,
):
    """Train a detector on your data; the class count and names come from the dataset.

    Examples:

        cvkit data shapes data/shapes_train --num 800 && cvkit data shapes data/shapes_val --num 100 --seed 1
        cvkit train detect --data data/shapes_train --val data/shapes_val --epochs 12
        cvkit train detect --data VOC2007 --split trainval --backbone resnet50 --neck rcnet --head retinanet
    """
    from cvkit.media.sinks import next_run_dir
    from cvkit.presets import load_preset

    from .data import load_dataset
    from .task import custom_preset
    from .training import train_detect

    p = load_preset(preset, overrides, task="detect")
    if backbone or neck or head:
        p = custom_preset(p, backbone, neck, head)
    train_set = load_dataset(data, split)
    train_set.warn_problems()
    val_set = None
    if val is not None:
        val_set = load_dataset(val)
        val_set.warn_problems()
        if val_set.classes != train_set.classes:
            raise UsageError(f"--val has classes {val_set.classes[:5]}, --data {train_set.classes[:5]}")
    work_dir = resume if resume is not None else next_run_dir(project, "detect")
    summary = train_detect(
        p,
        train_set,
        val_set,
        work_dir=work_dir,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        imgsz=imgsz,
        augment=augment,
        resume=resume is not None,
        bf16=bf16,
        seed=seed,
        num_workers=workers,
        progress=sys.stderr.isatty(),
    )
    best = (
        f", best ap50 {summary['best_value']:.4f} (epoch {summary['best_epoch']})"
        if summary["best_epoch"]
        else ""
    )
    typer.echo(
        f"trained {summary['epochs']} epochs on {len(train_set.samples)} images "
        f"({train_set.skipped} bad samples skipped){best}"
    )
    typer.echo(f"weights: {summary.get('weights')}  (cvkit detect SOURCE --weights {summary.get('weights')})")


def eval_detect_cmd(
    data: Path = typer.Option(..., "--data", help="COCO or VOC dataset to evaluate on."),
    preset: str = PRESET,
    weights: Optional[str] = WEIGHTS,
    overrides: List[str] = SET,
    split: Optional[str] = typer.Option(None, "--split", help="VOC: ImageSets/Main/<split>.txt."),
    conf: Optional[float] = typer.Option(None, "--conf", help="Score threshold (default: the head's)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where metrics.json and pr_curve.png go."),
    project: Path = typer.Option(Path("runs/eval"), "--project"),
):
    """COCO mAP (AP, AP50, AP75, small/medium/large; pycocotools) and a precision-recall plot.

    Example: `cvkit eval detect --data data/shapes_val --preset retinanet_shapes`
    """
    from cvkit.api import load_task
    from cvkit.media.sinks import next_run_dir

    from .data import load_dataset
    from .training import evaluate_coco

    task = load_task(preset, weights=weights, overrides=overrides, task="detect")
    ds = load_dataset(data, split)
    ds.warn_problems()
    out_dir = out if out is not None else next_run_dir(project, "detect")
    score_thr = conf if conf is not None else task.model.head.test_cfg.score_thr
    stats = evaluate_coco(task, ds, out_dir, progress=sys.stderr.isatty(), score_thr=score_thr)
    typer.echo(
        "  ".join(
            f"{k} " + ("n/a" if stats[k] is None else f"{stats[k]:.4f}")
            for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")
        )
    )
    typer.echo(
        f"{stats['images']} images, {stats['detections']} detections, {stats['skipped']} bad samples "
        f"skipped; PR curve: {stats['pr_curve']}"
    )


def data_check(
    path: Path = typer.Argument(..., help="COCO or VOC dataset folder (or COCO JSON file)."),
    split: Optional[str] = typer.Option(None, "--split", help="VOC: ImageSets/Main/<split>.txt."),
    limit: int = typer.Option(20, "--limit", help="Examples listed per kind of problem."),
):
    """Validate a detection dataset: missing images, file names escaping the root, malformed XML,
    unknown category or image ids, degenerate boxes, boxes outside the image.

    Example: `cvkit data check data/shapes_train`
    """
    from .data import check_report, load_dataset

    for line in check_report(load_dataset(path, split), limit):
        typer.echo(line)


def data_shapes(
    out: Path = typer.Argument(..., help="Output folder (images/ + annotations.json)."),
    num: int = typer.Option(200, "--num", help="Number of images."),
    size: int = typer.Option(128, "--size", help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed"),
):
    """Draw a synthetic COCO-format detection dataset of rectangles, ellipses and triangles.

    Example: `cvkit data shapes data/shapes_train --num 800`
    """
    from .synthetic import make_shapes_dataset

    if num < 1 or size < 32:
        raise UsageError("--num must be >= 1 and --size >= 32")
    typer.echo(f"wrote {make_shapes_dataset(out, num, size=size, seed=seed)}")


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command(rich_help_panel="Tasks")(detect)
    train_app.command("detect")(train_detect_cmd)
    eval_app.command("detect")(eval_detect_cmd)
    data_app = typer.Typer(
        help="Detection datasets: `cvkit data check DIR`, `cvkit data shapes OUT`.", no_args_is_help=True
    )
    data_app.command("check")(data_check)
    data_app.command("shapes")(data_shapes)
    app.add_typer(data_app, name="data", rich_help_panel="Training and evaluation")
