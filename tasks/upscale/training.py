"""Training and evaluation of super-resolution models, and cvkit's SR weight files.

- `make_loss("l1" | "mse")`: the pixel loss (ESPCN used MSE; CFSR and SCNet L1).
- `sr_metric(scale)`: Y-channel PSNR / SSIM with a border crop of `scale`, as BasicSR computes
  them, from model outputs rounded to uint8 (the metric of `cvkit.engine.train` validation).
- `evaluate_folder`: the benchmark protocol on a folder of HR images. A "y" evaluation feeds the
  model the (uint8-rounded) BT.601 luma, bicubic-downscaled in float: the SRCNN / ESPCN protocol
  behind the published bicubic numbers (30.39 dB on Set5 x3). An "rgb" evaluation feeds RGB LR
  stored as uint8 (BasicSR / EDSR benchmark sets; a "y" model gets the luma of it and bicubic
  chroma) and measures the luma of the RGB result.
- `train_upscale`: a preset's model trained on a folder of HR images by `cvkit.engine.train`.
- `save_weights` / `read_weights` / `load_model`: a `.safetensors` file of the model's
  state_dict with JSON metadata (task, model, scale, args) under the key "cvkit", so that a file
  made for another scale or model is refused in one line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from cvkit.engine.evaluate import evaluate
from cvkit.engine.train import BEST, train
from cvkit.errors import CvkitError, UsageError

from .data import SRTrainDataset, SRValDataset
from .metrics import psnr, ssim
from .models import SR_MODELS, upscale_rgb
from .task import checkpoint_meta

LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}
TRAIN_DEFAULTS = {"loss": "l1", "epochs": 100, "batch_size": 16, "patch_size": 48, "lr": 1e-3, "repeat": 20,
                      "schedule": "cosine"}


def make_loss(name: str):
    """`loss(model, batch)`: the pixel loss between `model(batch["lr"])` and `batch["hr"]`."""
    if name not in LOSSES:
        raise UsageError(f"unknown loss '{name}'; valid: {', '.join(LOSSES)}")
    fn = LOSSES[name]

    def loss(model: nn.Module, batch: dict) -> torch.Tensor:
        return fn(model(batch["lr"]).float(), batch["hr"])

    return loss


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """A CxHxW tensor in [0, 1] as HxW (one channel) or HxWxC uint8, rounded half to even."""
    a = x.detach().float().mul(255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def sr_metric(scale: int, crop_border: int | None = None):
    """Metric callable for `cvkit.engine`: per-sample Y-channel PSNR and SSIM of the model's
    output (rounded to uint8) against the HR image, `crop_border` (default `scale`) cropped."""
    crop = scale if crop_border is None else crop_border

    def metric(model: nn.Module, batch: dict) -> list[dict[str, float]]:
        lr, hr = batch["lr"], batch["hr"]
        sr = upscale_rgb(model, lr) if lr.shape[1] == 3 else model(lr)
        out = []
        for s, h in zip(sr, hr):
            s8, h8 = to_uint8(s), to_uint8(h)
            out.append({"psnr": psnr(s8, h8, crop, y_channel=True), "ssim": ssim(s8, h8, crop, y_channel=True)})
        return out

    return metric


def evaluate_folder(model: nn.Module, folder: str | Path, scale: int, *, channels: str | None = None,
                    crop_border: int | None = None, progress: bool = True) -> dict:
    """PSNR / SSIM on the BT.601 luma of the images in `folder` at `scale` (protocols in the module
    docstring; `channels` defaults to the model's). Returns psnr, ssim (means) and per_image."""
    channels = channels or model.in_channels
    if channels == "y" and model.in_channels != "y":
        raise UsageError("a 'y' evaluation needs a model that reads luma; use channels='rgb'")
    if getattr(model, "scale", scale) != scale:
        raise UsageError(f"the model upscales x{model.scale}, not x{scale}")
    dataset = SRValDataset(folder, scale, channels)
    res = evaluate(model, dataset, sr_metric(scale, crop_border), progress=progress, desc=f"eval x{scale}")
    per_image = [{"name": n, **r} for n, r in zip(dataset.names, res["per_sample"])]
    return {"psnr": res["psnr"], "ssim": res["ssim"], "per_image": per_image, "skipped": dataset.skipped}


def save_weights(model: nn.Module, path: str | Path, *, name: str, args: dict) -> Path:
    """Write `model`'s state_dict as safetensors with {"task", "model", "scale", "args"} metadata;
    atomic (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"task": "upscale", "model": name, "scale": model.scale, "args": args}
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(sd, str(tmp), metadata={"cvkit": json.dumps(meta)})
    os.chmod(tmp, 0o644)  # safetensors creates files readable by the owner only
    os.replace(tmp, path)
    return path


def read_weights(path: str | Path, *, scale: int | None = None, model: str | None = None) -> tuple[dict, dict]:
    """(state_dict, meta) of a cvkit SR weights file; UsageError when its scale or model differs
    from the one asked for, CvkitError when it is not a cvkit SR file."""
    path = Path(path)
    meta = checkpoint_meta(path)
    if meta.get("task") != "upscale":
        raise CvkitError(f"{path} is not a cvkit upscale weights file (no 'cvkit' metadata)")
    try:
        with safe_open(str(path), framework="pt") as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except (OSError, ValueError) as e:
        raise CvkitError(f"cannot read SR weights {path}: {e}") from None
    if scale is not None and meta["scale"] != scale:
        raise UsageError(f"{path.name} is a x{meta['scale']} checkpoint; x{scale} was asked for")
    if model is not None and meta["model"] != model:
        raise UsageError(f"{path.name} holds '{meta['model']}' weights, not '{model}'")
    return sd, meta


def load_model(path: str | Path, *, scale: int | None = None) -> nn.Module:
    """Build the model a cvkit SR weights file names and load it strictly (eval mode)."""
    sd, meta = read_weights(path, scale=scale)
    net = SR_MODELS.get(meta["model"])(**meta["args"])
    net.load_state_dict(sd)
    return net.eval()


def train_upscale(preset: dict, data: str | Path, val: str | Path | None = None, *, work_dir: str | Path,
                  epochs: int | None = None, batch_size: int | None = None, patch_size: int | None = None,
                  lr: float | None = None, repeat: int | None = None, resume: bool = False, bf16: bool = False,
                  seed: int = 0, num_workers: int = 0, launcher: str = "auto", progress: bool = True,
                  export: str | Path | None = None) -> dict:
    """Train the preset's model (`model`, `args`; defaults for the rest from its `train` section,
    then TRAIN_DEFAULTS) on HR images in `data`, validating on `val` each epoch.

    Writes the engine's checkpoints to `work_dir` and the best (or, without `val`, the last)
    weights as a cvkit safetensors file to `export` (default `work_dir/<preset name>.safetensors`).
    Returns the engine's summary plus `weights` and, with `val`, the best epoch's psnr/ssim.
    """
    cfg = {**TRAIN_DEFAULTS, **(preset.get("train") or {})}
    given = {"epochs": epochs, "batch_size": batch_size, "patch_size": patch_size, "lr": lr, "repeat": repeat}
    cfg.update({k: v for k, v in given.items() if v is not None})
    name, args = preset["model"], dict(preset.get("args") or {})
    net = SR_MODELS.get(name)(**args)
    scale, channels = net.scale, net.in_channels
    train_set = SRTrainDataset(data, scale, cfg["patch_size"], channels, repeat=cfg["repeat"])
    val_set = SRValDataset(val, scale, channels) if val is not None else None
    summary = train(net, train_set, loss_fn=make_loss(cfg["loss"]), val_dataset=val_set,
                    metric=sr_metric(scale) if val_set is not None else None, work_dir=work_dir,
                    epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                    schedule=cfg["schedule"], resume=resume, bf16=bf16, seed=seed,
                    num_workers=num_workers, launcher=launcher, progress=progress)
    if summary["best_checkpoint"]:
        best = torch.load(Path(work_dir) / BEST, map_location="cpu", weights_only=True)
        net.load_state_dict(best["state_dict"])
    summary["skipped_images"] = train_set.skipped
    if summary["best_epoch"]:
        best_entry = next(h for h in summary["history"] if h["epoch"] == summary["best_epoch"])
        summary.update({k: best_entry[k] for k in ("psnr", "ssim")})
    if int(os.environ.get("RANK", "0")) == 0:  # one writer under torchrun
        export = Path(export) if export else Path(work_dir) / f"{preset.get('name', name)}.safetensors"
        summary["weights"] = str(save_weights(net, export, name=name, args=args))
    return summary
