"""Training and evaluation of depth models.

- `depth_loss`: L1 between prediction and ground truth on the valid (> 0) pixels.
- `depth_metric`: FastDepth's per-image metrics (`metrics.evaluate_depth`) for the engine;
  `delta1` first, so the best checkpoint is the one with the highest delta1.
- Valid pixels: FastDepth counts every pixel where the target OR the prediction is positive, so a
  positive prediction at a hole is an error (and makes absrel, lg10 infinite). That is the
  official convention (`valid="fastdepth"`) and the default for its NYU `.h5` data, whose maps
  are dense. Data with holes (cvkit's folder format: 0 = invalid) is evaluated on target > 0
  only by default (`valid="target"`, the sparse-to-dense convention), by zeroing the prediction
  at holes so that those pixels drop out of the same function.
- `evaluate_model` / `evaluate_predictions`: a dataset's mean metrics (means of per-image
  values, as FastDepth's AverageMeter with batch size 1) plus an error-map image of the worst
  frames; the second reads depth maps saved earlier (16-bit PNG millimetres or .npy metres).
- `train_depth`: a preset's model trained on a dataset folder by `cvkit.engine.train`.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from cvkit.engine.evaluate import evaluate
from cvkit.engine.train import BEST, train
from cvkit.errors import CvkitError, UsageError
from cvkit.media.sinks import write_image

from .data import DepthDataset, TrainTransform, ValTransform, read_depth_png, train_val_roots
from .metrics import evaluate_depth
from .models import build_depth_model, input_size, normalisation, save_weights
from .render import error_panel

log = logging.getLogger("cvkit.depth")

VALID_MODES = ("fastdepth", "target")
REPORT_KEYS = ("delta1", "rmse", "mae", "absrel", "lg10", "delta2", "delta3")
TRAIN_DEFAULTS = {"epochs": 30, "batch_size": 8, "lr": 1e-3, "schedule": "cosine", "min_items": 0}
WORST_FILE = "worst_frames.png"


def default_valid(dataset: DepthDataset) -> str:
    return "fastdepth" if dataset.kind == "h5" else "target"


def frame_metrics(pred: torch.Tensor, target: torch.Tensor, valid: str) -> dict[str, float]:
    """`REPORT_KEYS` of `evaluate_depth` for one prediction (see the module docstring for `valid`)."""
    if valid not in VALID_MODES:
        raise UsageError(f"valid must be one of {', '.join(VALID_MODES)}; got '{valid}'")
    if valid == "target":
        pred = pred * (target > 0)
    result = evaluate_depth(pred, target)
    return {k: result[k] for k in REPORT_KEYS}


def predict_depth(model: nn.Module, image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Nx1xHxW depth in metres for Nx3xHxW RGB in [0, 1]."""
    return model((image - mean.to(image.device)) / std.to(image.device)).float()


def depth_loss(mean: torch.Tensor, std: torch.Tensor):
    """`loss(model, batch)`: mean |prediction - target| over the pixels with target > 0."""

    def loss(model: nn.Module, batch: dict) -> torch.Tensor:
        pred, target = predict_depth(model, batch["image"], mean, std), batch["depth"]
        valid = target > 0
        if not valid.any():  # a crop of holes only: no gradient, but a well-formed loss
            return pred.sum() * 0
        return (pred - target).abs()[valid].mean()

    return loss


def depth_metric(mean: torch.Tensor, std: torch.Tensor, valid: str = "target"):
    """Metric callable for `cvkit.engine`: per-image metrics (delta1 first)."""

    def metric(model: nn.Module, batch: dict) -> list[dict[str, float]]:
        pred = predict_depth(model, batch["image"], mean, std)
        return [frame_metrics(p[None], t[None], valid) for p, t in zip(pred.cpu(), batch["depth"].cpu())]

    return metric


def _summarise(per_sample: list[dict], names: list[str], skipped: list, valid: str) -> dict:
    if not per_sample:
        raise CvkitError("no depth maps were evaluated")
    out = {k: float(np.mean([r[k] for r in per_sample])) for k in REPORT_KEYS}
    out.update(rmse_m=out["rmse"] / 1000, mae_m=out["mae"] / 1000, frames=len(per_sample), valid=valid,
               skipped=[{"path": p, "reason": r} for p, r in skipped],
               per_image=[{"name": n, **r} for n, r in zip(names, per_sample)])
    return out


def _write_worst(rows: list[np.ndarray], out_dir: Path | None) -> str | None:
    if out_dir is None or not rows:
        return None
    width = max(r.shape[1] for r in rows)
    rows = [cv2.resize(r, (width, round(r.shape[0] * width / r.shape[1]))) if r.shape[1] != width else r
            for r in rows]
    path = Path(out_dir) / WORST_FILE
    write_image(path, np.concatenate(rows, axis=0))
    return str(path)


def _worst(per_sample: list[dict], count: int) -> list[int]:
    order = sorted(range(len(per_sample)), key=lambda i: -per_sample[i]["rmse"])
    return order[:count]


def evaluate_model(model: nn.Module, preset: dict, data: str | Path, *, valid: str | None = None,
                   out_dir: str | Path | None = None, worst: int = 4, progress: bool = True) -> dict:
    """Mean metrics of `model` on the dataset folder `data` at the preset's input size (resize
    and centre crop as FastDepth validates), and `worst_frames.png` (input, ground truth,
    prediction, error of the `worst` frames by rmse) in `out_dir`."""
    size = input_size(preset)
    dataset = DepthDataset(data, ValTransform(size) if size else None)
    valid = valid or default_valid(dataset)
    mean, std = normalisation(preset)
    res = evaluate(model, dataset, depth_metric(mean, std, valid), progress=progress, desc="eval depth")
    summary = _summarise(res["per_sample"], dataset.names, dataset.skipped, valid)
    rows = []
    with torch.inference_mode():
        for i in _worst(res["per_sample"], worst):
            item = dataset[i]
            pred = predict_depth(model, item["image"][None], mean, std)[0, 0].numpy()
            rgb = (item["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            rows.append(error_panel(rgb, item["depth"][0].numpy(), pred,
                                    f"{dataset.names[i]}  rmse {res['per_sample'][i]['rmse'] / 1000:.3f} m"))
    summary["worst_frames"] = _write_worst(rows, out_dir)
    return summary


def _find_prediction(pred_dir: Path, name: str) -> Path | None:
    for suffix in ("_depth.npy", "_depth.png", ".npy", ".png"):
        path = pred_dir / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def read_prediction(path: Path) -> np.ndarray:
    """A saved depth map as float32 metres: .npy (metres) or 16-bit PNG (millimetres)."""
    if path.suffix == ".npy":
        try:
            depth = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CvkitError(f"{path} is not a readable .npy file ({e})") from None
        depth = np.squeeze(depth)
        if depth.ndim != 2:
            raise CvkitError(f"{path} holds an array of shape {depth.shape}, not HxW depth")
        return depth.astype(np.float32)
    return read_depth_png(path)


def evaluate_predictions(pred_dir: str | Path, data: str | Path, *, valid: str | None = None,
                         out_dir: str | Path | None = None, worst: int = 4, progress: bool = True) -> dict:
    """Mean metrics of depth maps saved in `pred_dir` against the dataset `data` at full size,
    without a model. A sample `name` takes `name_depth.npy`, `name_depth.png` (what `cvkit depth
    --save-raw` writes), `name.npy` or `name.png`; a prediction of another size is resized to the
    ground truth (bilinear, counted in `resized`); a missing or unreadable one is skipped."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise CvkitError(f"prediction folder not found: {pred_dir}")
    dataset = DepthDataset(data)
    valid = valid or default_valid(dataset)
    skipped = list(dataset.skipped)
    per_sample, names, indices, resized = [], [], [], 0
    from tqdm import tqdm

    for i, name in enumerate(tqdm(dataset.names, desc="eval depth", disable=not progress, leave=False)):
        path = _find_prediction(pred_dir, name)
        if path is None:
            log.warning("skipping %s: no prediction %s_depth.png/.npy or %s.png/.npy in %s", name, name, name, pred_dir)
            skipped.append((name, "no prediction"))
            continue
        try:
            pred = read_prediction(path)
        except CvkitError as e:
            log.warning("skipping %s: %s", name, e)
            skipped.append((str(path), str(e)))
            continue
        _, target = dataset.load(i)
        if pred.shape != target.shape:
            pred = cv2.resize(pred, target.shape[::-1], interpolation=cv2.INTER_LINEAR)
            resized += 1
        per_sample.append(frame_metrics(torch.from_numpy(pred)[None, None], torch.from_numpy(target)[None, None], valid))
        names.append(name)
        indices.append(i)
    if not per_sample:
        raise CvkitError(f"no prediction in {pred_dir} matches a sample of {data}")
    summary = _summarise(per_sample, names, skipped, valid)
    summary["resized"] = resized
    rows = []
    for j in _worst(per_sample, worst):
        rgb, target = dataset.load(indices[j])
        pred = read_prediction(_find_prediction(pred_dir, names[j]))
        if pred.shape != target.shape:
            pred = cv2.resize(pred, target.shape[::-1], interpolation=cv2.INTER_LINEAR)
        rows.append(error_panel(rgb, target, pred, f"{names[j]}  rmse {per_sample[j]['rmse'] / 1000:.3f} m"))
    summary["worst_frames"] = _write_worst(rows, out_dir)
    return summary


def init_output_scale(net: nn.Module, dataset: DepthDataset, samples: int = 64) -> None:
    """Start the last BN (before the output ReLU) at the depth statistics of the first `samples`
    training maps: bias = mean, weight = standard deviation of the valid depths. From the default
    (0, 1) a network trained from scratch spends its first thousand steps only shifting its
    output to the data's range."""
    bn = getattr(net, f"decode_conv{net.num_blocks + 1}")[1]
    depths = np.concatenate([d[d > 0] for d in (dataset.load(i)[1] for i in range(min(samples, len(dataset))))])
    with torch.no_grad():
        bn.bias.fill_(float(depths.mean()))
        bn.weight.fill_(float(depths.std()))


class _Repeat(torch.utils.data.Dataset):
    """`dataset` seen `times` times per epoch (small datasets, fresh augmentations each time)."""

    def __init__(self, dataset, times: int):
        self.dataset, self.times = dataset, times

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, index: int) -> dict:
        return self.dataset[index % len(self.dataset)]


def train_depth(preset: dict, data: str | Path, val: str | Path | None = None, *, work_dir: str | Path,
                weights: str | None = None, epochs: int | None = None, batch_size: int | None = None,
                lr: float | None = None, min_items: int | None = None, resume: bool = False, bf16: bool = False,
                seed: int = 0, num_workers: int = 0, launcher: str = "auto", progress: bool = True,
                export: str | Path | None = None) -> dict:
    """Train the preset's model on `data` (a folder of `.h5` files or cvkit's folder format; a
    folder with `train/` and `val/` gives both) at the preset's `imgsz` with FastDepth's
    augmentations, validating on `val` each epoch (best = highest delta1).

    The model starts from `weights` (default: the preset's own weights when it has some, else
    random init; 'none' forces random init). `min_items` repeats a small dataset up to that many
    samples per epoch. Defaults for epochs, batch_size, lr, schedule, min_items come from the
    preset's `train` section, then TRAIN_DEFAULTS. Writes the engine's checkpoints to `work_dir`
    and the best (or last) weights as safetensors to `export` (default
    `work_dir/<preset name>.safetensors`). Returns the engine's summary plus `weights`.
    """
    cfg = {**TRAIN_DEFAULTS, **(preset.get("train") or {})}
    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "min_items": min_items}
    cfg.update({k: v for k, v in given.items() if v is not None})
    size = input_size(preset)
    if size is None:
        raise UsageError(f"preset '{preset['name']}' has no imgsz; training needs a fixed input size")
    if any(s % 32 for s in size):
        raise UsageError(f"training size {size[1]}x{size[0]} (imgsz) must be a multiple of 32")
    with warnings.catch_warnings():
        if weights is not None and str(weights).lower() == "none":
            warnings.simplefilter("ignore")  # random init is the point here
        net = build_depth_model(preset, weights)
    train_root, val_root = train_val_roots(data, val)
    train_set = DepthDataset(train_root, TrainTransform(size))
    if weights is not None and str(weights).lower() == "none":
        init_output_scale(net, train_set)
    times = max(1, -(-int(cfg["min_items"]) // len(train_set)))
    val_set = DepthDataset(val_root, ValTransform(size)) if val_root is not None else None
    mean, std = normalisation(preset)
    summary = train(net, _Repeat(train_set, times) if times > 1 else train_set, loss_fn=depth_loss(mean, std),
                    val_dataset=val_set,
                    metric=depth_metric(mean, std, default_valid(val_set)) if val_set is not None else None,
                    work_dir=work_dir, epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                    schedule=cfg["schedule"], resume=resume, bf16=bf16, seed=seed, num_workers=num_workers,
                    launcher=launcher, progress=progress)
    if summary["best_checkpoint"]:
        best = torch.load(Path(work_dir) / BEST, map_location="cpu", weights_only=True)
        net.load_state_dict(best["state_dict"])
    summary["skipped_samples"] = len(train_set.skipped) + (len(val_set.skipped) if val_set is not None else 0)
    if summary["best_epoch"]:
        entry = next(h for h in summary["history"] if h["epoch"] == summary["best_epoch"])
        summary.update({k: entry[k] for k in REPORT_KEYS if k in entry})
    if int(os.environ.get("RANK", "0")) == 0:  # one writer under torchrun
        export = Path(export) if export else Path(work_dir) / f"{preset['name']}.safetensors"
        summary["weights"] = str(save_weights(net.eval(), export, preset))
    return summary


__all__ = ["depth_loss", "depth_metric", "evaluate_model", "evaluate_predictions", "train_depth"]
