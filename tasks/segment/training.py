"""Training and evaluation of segmentation models on cvkit's engine.

- `seg_loss`: pixel cross-entropy ignoring label 255 on the main output, plus 0.4 x the same on the
  auxiliary head's output where the model has one (mmseg's and torchvision's recipes).
- `seg_metric`: the engine's validation callable, per-image mIoU and aAcc (the best checkpoint is
  picked by their mean over images; `evaluate_segment` gives the dataset-level numbers).
- `train_segment`: a spec's model trained on a dataset folder; writes the engine's checkpoints and a
  cvkit .safetensors with the metadata that rebuilds the model.
- `evaluate_segment` / `evaluate_predictions`: mmseg's IoUMetric over a dataset, from a model (whole
  or sliding-window) or from label PNGs written earlier by any tool; `format_table` prints mmseg's
  per-class table and `save_confusion` draws the row-normalised confusion matrix.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cvkit.engine.train import BEST, train
from cvkit.errors import UsageError

from .build import build_model, load_segment_weights, num_classes_of, save_weights
from .data import IGNORE, SegDataset, read_label, train_pipeline
from .datasets_meta import ClassSet, class_set
from .inference import slide_labels, whole_labels
from .metrics import IoUMetric

AUX_WEIGHT = 0.4
TRAIN_DEFAULTS = {"epochs": 50, "batch_size": 8, "crop": 512, "scale": None, "lr": 1e-3, "schedule": "cosine"}


def seg_loss(aux_weight: float = AUX_WEIGHT):
    """`loss(model, batch)`: {'loss_ce', and 'loss_aux' (weighted) where the model has an aux head}."""

    def loss(model: nn.Module, batch: dict) -> dict:
        out = model(batch["image"])
        losses = {"loss_ce": F.cross_entropy(out["out"].float(), batch["label"], ignore_index=IGNORE)}
        if "aux" in out:
            losses["loss_aux"] = aux_weight * F.cross_entropy(out["aux"].float(), batch["label"], ignore_index=IGNORE)
        return losses

    return loss


def seg_metric(num_classes: int):
    """Per-image mIoU and aAcc (percent) of the model's whole-image prediction."""

    def metric(model: nn.Module, batch: dict) -> list[dict[str, float]]:
        preds = whole_labels(model, batch["image"])
        out = []
        for p, t in zip(preds, batch["label"]):
            m = IoUMetric(num_classes)
            m.update(p, t)
            s = m.summary()
            out.append({"mIoU": s["mIoU"], "aAcc": s["aAcc"]})
        return out

    return metric


def dataset_classes(layout: str, num_classes: int, fallback=None) -> ClassSet:
    """Class names for a dataset layout (VOC, Cityscapes, ADE20K names when the count matches), else
    `fallback` (a dataset name or list), else generic names."""
    for spec in ({"voc": "voc", "cityscapes": "cityscapes", "ade20k": "ade20k"}.get(layout), fallback):
        if spec is not None:
            try:
                return class_set(spec, num_classes)
            except UsageError:
                pass
    return class_set(None, num_classes)


def train_segment(spec: dict, data: str | Path, val: str | Path | None = None, *, work_dir: str | Path,
                  epochs: int | None = None, batch_size: int | None = None, crop: int | None = None,
                  lr: float | None = None, train_cfg: dict | None = None, weights: str | None = None,
                  resume: bool = False, seed: int = 0, num_workers: int = 0, progress: bool = True,
                  export: str | Path | None = None, half: bool = False) -> dict:
    """Train the model of `spec` ({model, backbone, args, classes}) on the dataset folder `data`
    (training split) and validate on `val` (its validation split; for VOC, Cityscapes and ADE20K
    layouts `data`'s own val split when `val` is None and it exists). `weights` starts from a
    checkpoint (a classifier for another class count is re-initialised). Returns the engine's summary
    plus `weights` (the exported .safetensors), `skipped` (bad training samples) and, with validation,
    the best epoch's mIoU."""
    cfg = {**TRAIN_DEFAULTS, **(train_cfg or {})}
    cfg.update({k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "crop": crop, "lr": lr}.items()
                if v is not None})
    model = build_model(spec, aux=True)
    n = num_classes_of(model)
    if weights is not None:
        load_segment_weights(model, weights, reinit_classifier=True)
    train_set = SegDataset(data, n, split="train", transforms=train_pipeline(cfg["crop"], cfg["scale"]))
    val_set = None
    if val is not None:
        val_set = SegDataset(val, n, split="val")
    elif train_set.layout in ("voc", "cityscapes", "ade20k"):
        try:
            val_set = SegDataset(data, n, split="val")
        except UsageError:
            val_set = None
    summary = train(model, train_set, loss_fn=seg_loss(), val_dataset=val_set,
                    metric=seg_metric(n) if val_set is not None else None, work_dir=work_dir,
                    epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], schedule=cfg["schedule"],
                    resume=resume, seed=seed, num_workers=num_workers, progress=progress)
    if summary["best_checkpoint"]:
        best = torch.load(Path(work_dir) / BEST, map_location="cpu", weights_only=True)
        model.load_state_dict(best["state_dict"])
        entry = next(h for h in summary["history"] if h["epoch"] == summary["best_epoch"])
        summary["mIoU"] = entry.get("mIoU")
    classes = dataset_classes(train_set.layout, n, spec.get("classes"))
    summary["skipped"] = train_set.skipped
    if int(os.environ.get("RANK", "0")) == 0:
        export = Path(export) if export else Path(work_dir) / f"{spec.get('name') or spec['model']}.safetensors"
        saved = {k: spec.get(k) for k in ("model", "backbone", "args")}
        saved["args"] = {**(saved["args"] or {}), "num_classes": n}
        classes_meta = classes.name if classes.name != "custom" else list(classes.classes)
        summary["weights"] = str(save_weights(model, export, saved, classes_meta, half=half))
    return summary


@torch.inference_mode()
def evaluate_segment(model: nn.Module, dataset: SegDataset, *, mode: str = "whole", crop=(512, 512),
                     stride=(341, 341), progress: bool = True) -> IoUMetric:
    """IoUMetric of `model` (eval mode) over `dataset` (no augmentation), whole or sliding-window."""
    model.eval()
    metric = IoUMetric(dataset.num_classes)
    for i in tqdm(range(len(dataset)), desc="evaluate", disable=not progress, leave=False):
        sample = dataset[i]
        x = sample["image"][None]
        pred = slide_labels(model, x, crop, stride) if mode == "slide" else whole_labels(model, x)
        metric.update(pred[0], sample["label"])
    return metric


def evaluate_predictions(pred_dir: str | Path, dataset: SegDataset, *, progress: bool = True) -> tuple[IoUMetric, int]:
    """(IoUMetric, number missing) of label PNGs in `pred_dir` (found by the image's name, anywhere
    below it) against `dataset`'s labels; missing or mis-sized predictions are skipped with a warning."""
    import logging

    log = logging.getLogger("cvkit.tasks.segment")
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise UsageError(f"prediction folder not found: {pred_dir}")
    found = {p.stem: p for p in sorted(pred_dir.rglob("*.png"))}
    metric = IoUMetric(dataset.num_classes)
    missing = 0
    for i in tqdm(range(len(dataset)), desc="evaluate", disable=not progress, leave=False):
        image_path, label_path = dataset.samples[i]
        stem = image_path.name[:-len("_leftImg8bit.png")] if dataset.layout == "cityscapes" else image_path.stem
        pred_path = found.get(stem) or found.get(image_path.stem)
        label = dataset._label(label_path)
        if pred_path is None:
            missing += 1
            log.warning("no prediction for %s in %s", image_path.name, pred_dir)
            continue
        pred = read_label(pred_path)
        if pred.shape != label.shape:
            missing += 1
            log.warning("prediction %s is %dx%d, its label %dx%d; skipped", pred_path.name, pred.shape[1],
                        pred.shape[0], label.shape[1], label.shape[0])
            continue
        metric.update(pred.astype(np.int64), label.astype(np.int64))
    if missing == len(dataset):
        raise UsageError(f"no predictions in {pred_dir} match the images of the dataset")
    return metric, missing


def format_table(metric: IoUMetric, classes: ClassSet) -> str:
    """mmseg's per-class table (IoU and Acc in percent, 2 decimals; nan where undefined) and the
    summary line."""
    per = metric.per_class()
    rows = [(name, f"{100 * iou:.2f}" if not np.isnan(iou) else "nan", f"{100 * acc:.2f}" if not np.isnan(acc) else "nan")
            for name, iou, acc in zip(classes.classes, per["IoU"], per["Acc"])]
    widths = [max(len(r[i]) for r in rows + [("Class", "IoU", "Acc")]) for i in range(3)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells):
        return "|" + "|".join(f" {c:^{w}} " for c, w in zip(cells, widths)) + "|"

    s = metric.summary()
    return "\n".join([rule, line(("Class", "IoU", "Acc")), rule, *(line(r) for r in rows), rule,
                      f"aAcc: {s['aAcc']:.2f}  mIoU: {s['mIoU']:.2f}  mAcc: {s['mAcc']:.2f}"])


def save_confusion(metric: IoUMetric, classes: ClassSet, path: str | Path) -> Path:
    """The confusion matrix (rows: ground truth, columns: prediction), each row normalised to 1, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = metric.num_classes
    m = metric.confusion[:c, :c].numpy().astype(np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = min(max(4.0, 0.35 * c + 2), 40)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if c <= 40:
        ax.set_xticks(range(c), classes.classes, rotation=90)
        ax.set_yticks(range(c), classes.classes)
    if c <= 12:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("confusion matrix (rows normalised)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


__all__ = ["AUX_WEIGHT", "TRAIN_DEFAULTS", "dataset_classes", "evaluate_predictions", "evaluate_segment",
           "format_table", "save_confusion", "seg_loss", "seg_metric", "train_segment"]
