"""Training on mmengine's Runner, for any task: a model, a dataset, a loss and a metric.

`train` wraps the network in an mmengine `BaseModel` whose loss is `loss_fn(net, batch)` and whose
validation output is `metric(net, batch)` (see `cvkit.engine.evaluate`); Adam, a cosine or step
learning-rate schedule, validation every epoch, and `CvkitCheckpointHook`, which replaces
mmengine's checkpointing:

- `last.pth` (model, optimizer, schedulers, epoch, iteration, history) after every epoch and
  `best.pth` (model weights and meta) when the first metric key improves (higher is better);
- every file is written to a temporary name and renamed into place, so a kill never leaves a
  half-written checkpoint;
- checkpoints hold only tensors and plain Python values, so they load with
  `torch.load(weights_only=True)`. mmengine 0.10 resumes through plain `torch.load`, which under
  torch >= 2.6 refuses its own checkpoints (message hub objects, numpy scalars); ours pass, and
  `resume=True` continues at the saved epoch with optimizer and scheduler state.

It also draws a tqdm bar per epoch (iterations, loss), prints one line per epoch with the loss,
learning rate and validation metrics (mmengine's own console log is kept to warnings), keeps
`history.json`, and at the end writes `training_curve.png`.

Distributed: under `torchrun` (RANK / WORLD_SIZE set) the "pytorch" launcher is chosen; on CPU the
gloo process group is started here (mmengine's own start-up assumes CUDA) and the model wrapped in
MMDistributedDataParallel without device ids. `batch_size` is per process; mmengine's
DefaultSampler shards the data.
"""
from __future__ import annotations

import json
import math
import os
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..errors import CvkitError, UsageError
from ..hardware import cpu_has_native_bf16
from .evaluate import Metric, mean_of

LAST, BEST, CURVE, HISTORY = "last.pth", "best.pth", "training_curve.png", "history.json"
SCHEDULES = ("cosine", "step")
LAUNCHERS = ("auto", "none", "pytorch")


def native_bf16() -> bool:
    """True when bf16 runs natively: a CUDA device with bf16, or a CPU with AVX512_BF16 or AMX
    (on other CPUs bf16 matmuls crawl)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def atomic_save(obj, path: str | Path) -> Path:
    """`torch.save` to a temporary name in the same folder, then rename into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def _atomic_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def plot_curve(history: list[dict], path: str | Path) -> Path:
    """Training loss and every validation metric per epoch, one panel each, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in history[0] if k not in ("epoch", "loss", "lr")] if history else []
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(4.5 * (1 + len(keys)), 3.4), squeeze=False)
    epochs = [h["epoch"] for h in history]
    panels = [("loss", "training loss")] + [(k, f"validation {k}") for k in keys]
    for ax, (key, title) in zip(axes[0], panels):
        points = [(e, h[key]) for e, h in zip(epochs, history) if key in h]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if key == "loss" and points and min(p[1] for p in points) > 0:
            ax.set_yscale("log")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _mmengine():
    """mmengine classes, imported on first use (the import is slow)."""
    from mmengine.evaluator import BaseMetric, Evaluator
    from mmengine.hooks import Hook
    from mmengine.model import BaseModel, MMDistributedDataParallel, is_model_wrapper
    from mmengine.runner import Runner

    return BaseMetric, Evaluator, Hook, BaseModel, MMDistributedDataParallel, is_model_wrapper, Runner


def _build_classes():
    BaseMetric, _, Hook, BaseModel, _, is_model_wrapper, _ = _mmengine()

    class TrainModel(BaseModel):
        """The network plus its loss and metric, in the form mmengine's loops call."""

        def __init__(self, net: nn.Module, loss_fn: Callable, metric: Metric | None, bf16: bool):
            super().__init__()
            self.net, self.loss_fn, self.metric, self.bf16 = net, loss_fn, metric, bf16

        def forward(self, mode: str = "loss", **batch):
            if mode == "loss":
                device = "cuda" if torch.cuda.is_available() else "cpu"
                with torch.autocast(device, dtype=torch.bfloat16, enabled=self.bf16):
                    loss = self.loss_fn(self.net, batch)
                return loss if isinstance(loss, dict) else {"loss": loss}
            if mode == "predict":
                return self.metric(self.net, batch)
            raise ValueError(f"unsupported mode '{mode}'")

    class MeanMetric(BaseMetric):
        """Collects the per-sample dicts of the metric callable and averages them."""

        default_prefix = ""

        def process(self, data_batch, data_samples) -> None:
            self.results.extend(data_samples)

        def compute_metrics(self, results: list) -> dict:
            return mean_of(results)

    class CvkitCheckpointHook(Hook):
        """Progress bar, epoch lines, history, atomic last/best checkpoints, training curve."""

        priority = "VERY_LOW"

        def __init__(self, work_dir: Path, validate: bool, progress: bool):
            self.work_dir, self.validate, self.progress = work_dir, validate, progress
            self.history: list[dict] = []
            self.best: dict = {}
            self.bar = None

        def _net(self, runner) -> nn.Module:
            """The TrainModel, unwrapped from DDP."""
            return runner.model.module if is_model_wrapper(runner.model) else runner.model

        def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
            expected, found = set(self._net(runner).state_dict()), set(checkpoint.get("state_dict", {}))
            if expected != found:
                missing, extra = sorted(expected - found)[:3], sorted(found - expected)[:3]
                raise CvkitError(f"checkpoint does not match the model (missing {missing}, unexpected {extra})")
            cvkit_meta = checkpoint["meta"].get("cvkit", {})
            self.history = list(cvkit_meta.get("history", []))
            self.best = dict(cvkit_meta.get("best", {}))

        def before_train_epoch(self, runner) -> None:
            self.loss_sum, self.loss_n = 0.0, 0
            if self.progress and runner.rank == 0:
                self.bar = tqdm(total=len(runner.train_dataloader), leave=False,
                                desc=f"epoch {runner.epoch + 1}/{runner.max_epochs}")

        def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
            loss = outputs["loss"]
            loss = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
            self.loss_sum, self.loss_n = self.loss_sum + loss, self.loss_n + 1
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(loss=f"{loss:.4g}")

        def after_train_epoch(self, runner) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            lr = runner.optim_wrapper.get_lr()["lr"][0]
            self.history.append({"epoch": runner.epoch + 1, "loss": self.loss_sum / max(self.loss_n, 1),
                                 "lr": float(lr)})
            if not self.validate:
                self._end_epoch(runner, completed=runner.epoch + 1)

        def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
            if not self.history or not metrics:  # a validation outside training
                return
            entry = self.history[-1]
            entry.update({k: float(v) for k, v in metrics.items()})
            key = next(iter(metrics))
            if not self.best or entry[key] > self.best["value"]:
                self.best = {"key": key, "value": entry[key], "epoch": entry["epoch"]}
                if runner.rank == 0:
                    atomic_save({"meta": self._meta(runner, entry["epoch"]),
                                 "state_dict": self._net(runner).net.state_dict()}, self.work_dir / BEST)
            self._end_epoch(runner, completed=runner.epoch)

        def _meta(self, runner, completed: int) -> dict:
            return {"epoch": completed, "iter": runner.iter, "seed": int(runner.seed),
                    "cvkit": {"history": self.history, "best": self.best}}

        def _end_epoch(self, runner, completed: int) -> None:
            if runner.rank != 0:
                return
            schedulers = runner.param_schedulers
            atomic_save({
                "meta": self._meta(runner, completed),
                "state_dict": self._net(runner).state_dict(),
                "optimizer": runner.optim_wrapper.state_dict(),
                "param_schedulers": [s.state_dict() for s in schedulers],
                # mmengine's resume requires these keys; its buffers are not kept (not plain data).
                "message_hub": {"log_scalars": {}, "runtime_info": {}, "resumed_keys": {}},
            }, self.work_dir / LAST)
            _atomic_text(json.dumps(self.history, indent=1), self.work_dir / HISTORY)
            entry = self.history[-1]
            line = f"epoch {entry['epoch']}/{runner.max_epochs}  loss {entry['loss']:.5g}  lr {entry['lr']:.3g}"
            line += "".join(f"  {k} {v:.4f}" for k, v in entry.items() if k not in ("epoch", "loss", "lr"))
            tqdm.write(line)

        def after_train(self, runner) -> None:
            if runner.rank == 0 and self.history:
                plot_curve(self.history, self.work_dir / CURVE)

    return TrainModel, MeanMetric, CvkitCheckpointHook


def _launcher(launcher: str) -> str:
    if launcher not in LAUNCHERS:
        raise UsageError(f"launcher must be one of {', '.join(LAUNCHERS)}; got '{launcher}'")
    if launcher == "auto":
        return "pytorch" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "none"
    return launcher


def _scheduler(schedule: str, epochs: int, lr: float) -> dict:
    if schedule == "cosine":
        return {"type": "CosineAnnealingLR", "by_epoch": True, "begin": 0, "end": epochs, "T_max": epochs,
                    "eta_min": lr * 1e-2, "convert_to_iter_based": True}
    if schedule == "step":
        milestones = sorted({max(1, round(epochs * 0.5)), max(1, round(epochs * 0.75))})
        return {"type": "MultiStepLR", "by_epoch": True, "milestones": milestones, "gamma": 0.1}
    raise UsageError(f"schedule must be one of {', '.join(SCHEDULES)}; got '{schedule}'")


def train(model: nn.Module, train_dataset: Dataset, *, loss_fn: Callable, val_dataset: Dataset | None = None,
          metric: Metric | None = None, work_dir: str | Path, epochs: int, batch_size: int, lr: float,
          schedule: str = "cosine", resume: bool = False, bf16: bool = False, seed: int = 0,
          num_workers: int = 0, launcher: str = "auto", progress: bool = True) -> dict:
    """Train `model` on `train_dataset` with mmengine's Runner; validate on `val_dataset` each epoch.

    `loss_fn(model, batch)` returns a loss tensor (or a dict of named losses, summed);
    `metric(model, batch)` returns one dict of numbers per sample, whose first key picks the best
    checkpoint (higher is better). `resume=True` continues from `work_dir/last.pth`; without it a
    `work_dir` that already holds a run is refused (nothing overwrites an earlier run). `bf16` uses
    bf16 autocast for the training forward where the hardware runs bf16 natively, else warns and
    stays in float32. Returns a summary: best key, value and epoch, epochs done, history, paths.
    """
    if (val_dataset is None) != (metric is None):
        raise UsageError("validation needs both val_dataset and metric")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise UsageError(f"epochs and batch size must be >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    param_scheduler = _scheduler(schedule, epochs, lr)
    launcher = _launcher(launcher)
    if bf16 and not native_bf16():
        warnings.warn("--bf16: this machine has no native bf16 (AVX512_BF16/AMX or a bf16 GPU); "
                      "training in float32 instead", stacklevel=2)
        bf16 = False
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    last = work_dir / LAST
    if resume and not last.exists():
        warnings.warn(f"--resume: no {last}; starting from scratch", stacklevel=2)
        resume = False
    elif not resume and last.exists():
        raise UsageError(f"{work_dir} already holds a training run ({LAST}); resume it or choose another folder")

    _, Evaluator, _, _, MMDDP, _, Runner = _mmengine()
    TrainModel, MeanMetric, CvkitCheckpointHook = _build_classes()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    started_group = False
    if launcher == "pytorch" and backend == "gloo" and not dist.is_initialized():
        dist.init_process_group(backend="gloo")
        started_group = True
    world = dist.get_world_size() if dist.is_initialized() else 1

    wrapped = TrainModel(model, loss_fn, metric, bf16)
    if launcher == "pytorch" and backend == "gloo":
        wrapped = MMDDP(module=wrapped)
        # mmengine sets this to 1 per process anyway, with a warning; follow torchrun's OMP setting
        os.environ.setdefault("MKL_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    per_rank = math.ceil(len(train_dataset) / world)
    hook = CvkitCheckpointHook(work_dir, validate=val_dataset is not None, progress=progress)
    validation = {}
    if val_dataset is not None:
        validation = {
            "val_dataloader": {"dataset": val_dataset, "batch_size": 1, "num_workers": 0,
                                "sampler": {"type": "DefaultSampler", "shuffle": False},
                                "collate_fn": {"type": "default_collate"}},
            "val_cfg": {}, "val_evaluator": Evaluator([MeanMetric()])}
    runner = Runner(
        model=wrapped,
        work_dir=str(work_dir),
        experiment_name=f"cvkit_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:6]}",
        train_dataloader={"dataset": train_dataset, "batch_size": batch_size, "num_workers": num_workers,
                              "persistent_workers": num_workers > 0, "drop_last": per_rank >= batch_size,
                              "sampler": {"type": "DefaultSampler", "shuffle": True},
                              "collate_fn": {"type": "default_collate"}},
        train_cfg={"by_epoch": True, "max_epochs": epochs, "val_interval": 1},
        optim_wrapper={"optimizer": {"type": "Adam", "lr": lr}},
        param_scheduler=param_scheduler,
        default_hooks={"checkpoint": None, "logger": {"type": "LoggerHook", "interval": 50}},
        custom_hooks=[hook],
        launcher=launcher,
        env_cfg={"cudnn_benchmark": False, "dist_cfg": {"backend": backend}},
        randomness={"seed": seed},
        log_level="WARNING",
        load_from=str(last) if resume else None,
        resume=resume,
        **validation,
    )
    # datasets here are plain torch datasets; mmengine's "no metainfo" warnings are noise
    runner.logger.addFilter(lambda record: "has no metainfo" not in record.getMessage())
    runner.train()
    if started_group:
        dist.destroy_process_group()
    done = hook.history[-1]["epoch"] if hook.history else 0
    return {
        "epochs": done,
        "best_key": hook.best.get("key"),
        "best_value": hook.best.get("value"),
        "best_epoch": hook.best.get("epoch"),
        "history": hook.history,
        "work_dir": str(work_dir),
        "last_checkpoint": str(last),
        "best_checkpoint": str(work_dir / BEST) if hook.best else None,
        "curve": str(work_dir / CURVE) if hook.history else None,
    }
