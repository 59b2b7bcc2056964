"""Training SCNN on CULane- or TuSimple-style data with `cvkit.engine.train`, and cvkit's lane
weight files.

Loss as in SCNN: cross-entropy over background + lanes on the full-resolution logits, the
background class weighted 0.4, plus 0.1 x the binary cross-entropy of the existence branch.
Validation reports the mean per-image lane F1 (CULane matching: lanes 30 px wide at 590 px high,
IoU > 0.5), which picks the best checkpoint; `cvkit eval lanes` gives the official, pooled
numbers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from cvkit.engine.train import BEST, train
from cvkit.errors import UsageError

from .data import LaneDataset, unpad
from .evaluate import culane_width
from .metrics import culane_match
from .postprocess import CULANE_ROWS, postprocess
from .task import blur_size, build_model, load_model_weights

BACKGROUND_WEIGHT, EXIST_WEIGHT = 0.4, 0.1
TRAIN_DEFAULTS = {"epochs": 12, "batch_size": 8, "lr": 2e-3, "schedule": "cosine"}


def lane_loss(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    """{"loss_seg": weighted CE, "loss_exist": 0.1 x existence BCE} for a batch."""
    out = model(batch["image"])
    logits = out["seg_pred"].float()
    weight = torch.ones(logits.shape[1], device=logits.device)
    weight[0] = BACKGROUND_WEIGHT
    seg = F.cross_entropy(logits, batch["label"], weight=weight)
    exist = F.binary_cross_entropy(out["exist_pred"].float().clamp(1e-6, 1 - 1e-6), batch["exist"])
    return {"loss_seg": seg, "loss_exist": EXIST_WEIGHT * exist}


def lane_metric(model: nn.Module, batch: dict) -> list[dict[str, float]]:
    """Per-image lane F1 (first key), tp, fp, fn with CULane matching (width scaled to the height)."""
    out = model(batch["image"])
    sizes = [tuple(s) for s in batch["size"].tolist()]
    found = postprocess(out, sizes, CULANE_ROWS, blur=blur_size(batch["image"].shape[-2]))
    results = []
    for lanes, gt, size in zip(found, batch["gt"], sizes):
        r = culane_match(unpad(gt), [lane.points for lane in lanes], culane_width(size[0]), 0.5, size)
        tp, fp, fn = r["tp"], r["fp"], r["fn"]
        f1 = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
        results.append({"F1": f1, "tp": tp, "fp": fp, "fn": fn})
    return results


def save_weights(model: nn.Module, path: str | Path, meta: dict) -> Path:
    """The model's state_dict as safetensors with cvkit metadata (task, backbone, input_size,
    num_lanes, ...); written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(sd, str(tmp), metadata={"cvkit": json.dumps({"task": "lanes", **meta})})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def train_lanes(preset: dict, data: str | Path, *, work_dir: str | Path, val: str | Path | None = None,
                weights: str | None = "none", epochs: int | None = None, batch_size: int | None = None,
                lr: float | None = None, resume: bool = False, bf16: bool = False, seed: int = 0,
                num_workers: int = 0, launcher: str = "auto", progress: bool = True,
                export: str | Path | None = None) -> dict:
    """Train the preset's SCNN on the train split of `data` (CULane list or TuSimple json; see
    `data.py`), validating on the val split of `val` (default: `data`'s, when it has one).

    `weights` initialises the model ('none': random; None: the preset's weights). Writes the
    engine's checkpoints to `work_dir` and the best (or last) weights as a cvkit safetensors file
    (`export`, default `work_dir/<preset>.safetensors`). Returns the engine's summary plus
    `weights`, skipped sample counts and the best epoch's F1."""
    cfg = {**TRAIN_DEFAULTS, **(preset.get("train") or {})}
    cfg.update({k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "lr": lr}.items() if v is not None})
    model = load_model_weights(build_model(preset), preset, weights) if weights != "none" else build_model(preset)
    size, lanes = model.input_size, model.num_lanes
    train_set = LaneDataset(data, "train", input_size=size, num_lanes=lanes)
    val_set = None
    if val is not None:
        val_set = LaneDataset(val, "val", input_size=size, num_lanes=lanes, with_gt=True)
    elif Path(data).is_dir():  # the dataset's own val split, when it has one
        try:
            val_set = LaneDataset(data, "val", input_size=size, num_lanes=lanes, with_gt=True,
                                  protocol=train_set.protocol)
        except UsageError:
            val_set = None
    summary = train(model, train_set, loss_fn=lane_loss, val_dataset=val_set,
                    metric=lane_metric if val_set is not None else None, work_dir=work_dir,
                    epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], schedule=cfg["schedule"],
                    resume=resume, bf16=bf16, seed=seed, num_workers=num_workers, launcher=launcher,
                    progress=progress)
    if summary.get("best_checkpoint"):
        best = torch.load(Path(work_dir) / BEST, map_location="cpu", weights_only=True)
        model.load_state_dict(best["state_dict"])
    summary["skipped_samples"] = len(train_set.skipped) + (len(val_set.skipped) if val_set is not None else 0)
    if summary.get("best_epoch"):
        entry = next(h for h in summary["history"] if h["epoch"] == summary["best_epoch"])
        summary["F1"] = entry["F1"]
    if int(os.environ.get("RANK", "0")) == 0:
        export = Path(export) if export else Path(work_dir) / f"{preset.get('name', 'scnn')}.safetensors"
        meta = {"backbone": preset.get("backbone"), "input_size": list(size), "num_lanes": lanes,
                "args": preset.get("args") or {}}
        summary["weights"] = str(save_weights(model, export, meta))
    return summary


__all__ = ["lane_loss", "lane_metric", "save_weights", "train_lanes"]
