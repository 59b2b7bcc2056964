"""Training and evaluation of Panoptic-DeepLab, and cvkit's panoptic weight files.

- `deeplab_loss`: the losses of detectron2's Panoptic-DeepLab: cross entropy on the hardest
  `top_k` share of pixels with per-pixel weights (small instances x3), MSE on the centre heatmap
  (weight 200) and L1 on the offsets (weight 0.01), the last two averaged over their weighted
  pixels, all on input-resolution predictions.
- `train_panoptic`: a preset's Panoptic-DeepLab trained by `cvkit.engine.train` on a COCO panoptic
  folder (`data.PanopticDataset`), validated by per-image PQ; exports a `.safetensors` file.
- `evaluate_panoptic`: PQ / SQ / RQ (All / Things / Stuff, per class) of a model on a dataset,
  accumulated over all images as panopticapi does; `evaluate_predictions`: the same for COCO
  panoptic predictions saved earlier (PNGs + JSON), without a model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from cvkit.engine.train import BEST, train
from cvkit.errors import CvkitError, UsageError

from .data import IGNORE, BadSample, PanopticDataset, find_layout
from .metrics import PanopticQuality, read_pair_areas
from .models import PANOPTIC_MODELS, pad_to
from .task import categories_from_preset, label_map_to_segments

TRAIN_DEFAULTS = {"epochs": 20, "batch_size": 8, "lr": 1e-3, "top_k": 0.2, "center_weight": 200.0,
                  "offset_weight": 0.01, "schedule": "cosine"}


def deeplab_loss(top_k: float = 0.2, center_weight: float = 200.0, offset_weight: float = 0.01):
    """`loss(model, batch) -> {"loss_semantic", "loss_center", "loss_offset"}` (already weighted; the
    engine sums the keys named loss*)."""

    def loss(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        out = model(batch["image"])
        pixel = F.cross_entropy(out["sem_seg"].float(), batch["semantic"], ignore_index=IGNORE, reduction="none")
        pixel = (pixel * batch["semantic_weights"]).flatten()
        if top_k < 1:
            pixel = pixel.topk(max(1, int(top_k * pixel.numel()))).values
        cw = batch["center_weights"][:, None]
        center = (F.mse_loss(out["center"].float(), batch["center"], reduction="none") * cw).sum()
        ow = batch["offset_weights"][:, None]
        offset = (F.l1_loss(out["offset"].float(), batch["offset"], reduction="none") * ow).sum()
        return {"loss_semantic": pixel.mean(), "loss_center": center_weight * center / cw.sum().clamp(min=1),
                "loss_offset": offset_weight * offset / ow.sum().clamp(min=1)}

    return loss


def predict_segments(model: nn.Module, images: torch.Tensor, categories: list[dict]) -> list[dict]:
    """Task results (`ids`, `segments_info`) for a batch of equal-size images (0..255)."""
    size = tuple(images.shape[-2:])
    raw = model(pad_to(images, 16))
    return [label_map_to_segments(m.cpu().numpy(), categories, model.label_divisor)
            for m in model.panoptic(raw, [size] * len(images))]


def _update(pq: PanopticQuality, result: dict, gt_ids: torch.Tensor, gt_segments: torch.Tensor, name: str) -> None:
    gt = [{"id": int(i), "category_id": int(c), "iscrowd": int(k), "area": int(a)} for i, c, k, a in gt_segments]
    pq.update(gt_ids.numpy(), gt, result["ids"], result["segments_info"], name=name)


def image_pq_metric(categories: list[dict]):
    """Validation metric for the engine: PQ / SQ / RQ of each image on its own (the mean over images
    approximates the dataset PQ; `evaluate_panoptic` gives the exact one)."""

    def metric(model: nn.Module, batch: dict) -> list[dict[str, float]]:
        out = []
        for res, ids, segs in zip(predict_segments(model, batch["image"], categories), batch["gt_ids"],
                                  batch["gt_segments"]):
            pq = PanopticQuality(categories)
            _update(pq, res, ids, segs, "")
            s = pq.summary()["All"]
            out.append({"pq": s["pq"], "sq": s["sq"], "rq": s["rq"]})
        return out

    return metric


@torch.inference_mode()
def evaluate_panoptic(model: nn.Module, data: str | Path | PanopticDataset, *, progress: bool = True) -> dict:
    """PanopticQuality.summary() of `model` over every image of `data`, plus `images` and `skipped`."""
    dataset = data if isinstance(data, PanopticDataset) else PanopticDataset(data)
    model.eval()
    pq = PanopticQuality(dataset.categories)
    done = 0
    for i in tqdm(range(len(dataset)), desc="eval panoptic", disable=not progress, leave=False):
        try:
            image, ids, segments = dataset.load(i)
        except BadSample as e:
            dataset._skip(e)
            continue
        res = predict_segments(model, torch.from_numpy(image).permute(2, 0, 1)[None].float(), dataset.categories)[0]
        gt = torch.tensor([[s["id"], s["category_id"], s.get("iscrowd", 0), s["area"]] for s in segments]).reshape(-1, 4)
        _update(pq, res, torch.from_numpy(ids), gt, dataset.items[i][1].name)
        done += 1
    return {**pq.summary(), "images": done, "skipped": dataset.skipped}


def evaluate_predictions(pred: str | Path, data: str | Path) -> dict:
    """PQ of COCO panoptic predictions in `pred` (a `panoptic.json` with its PNGs under
    `pred/panoptic/`, as `cvkit panoptic` writes, or any JSON + PNG folder of the same layout)
    against the dataset `data`. Predictions are matched to images by PNG file name (without
    extension)."""
    gt_json, gt_pngs, _ = find_layout(data)
    pred_json, pred_pngs, _ = find_layout(pred)
    gt = json.loads(gt_json.read_text())
    preds = {Path(a["file_name"]).stem: a for a in json.loads(pred_json.read_text())["annotations"]}
    pq = PanopticQuality(gt["categories"])
    pairs = [(ann, preds[Path(ann["file_name"]).stem]) for ann in gt["annotations"]
             if Path(ann["file_name"]).stem in preds]
    missing = len(gt["annotations"]) - len(pairs)
    paths = [(gt_pngs / ann["file_name"], pred_pngs / p["file_name"]) for ann, p in pairs]
    names = [ann["file_name"] for ann, _ in pairs]
    for (ann, p), name, areas in zip(pairs, names, read_pair_areas(paths, names)):
        pq.update_pairs(*areas, ann["segments_info"], p["segments_info"], name)
    if missing == len(gt["annotations"]):
        raise CvkitError(f"no prediction in {pred_json} matches an image of {gt_json} (by file name)")
    return {**pq.summary(), "images": len(gt["annotations"]) - missing, "missing": missing}


def save_weights(model: nn.Module, path: str | Path, *, preset: dict, half: bool = False) -> Path:
    """Write `model`'s state_dict as safetensors (float16 with `half`) with {"task", "model",
    "backbone", "args"} metadata; atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"task": "panoptic", "model": preset["model"], "backbone": preset.get("backbone"),
            "args": preset.get("args") or {}}
    sd = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
          for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(sd, str(tmp), metadata={"cvkit": json.dumps(meta)})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def train_panoptic(preset: dict, data: str | Path, val: str | Path | None = None, *, work_dir: str | Path,
                   epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
                   resume: bool = False, seed: int = 0, num_workers: int = 0, progress: bool = True,
                   export: str | Path | None = None, init: nn.Module | None = None) -> dict:
    """Train the preset's Panoptic-DeepLab (`model`, `backbone`, `args`; options from its `train`
    section, then TRAIN_DEFAULTS) on the COCO panoptic folder `data`, validating on `val` by
    per-image PQ; exports the best (or last) weights to `export` (default
    `work_dir/<preset name>.safetensors`). `init` starts from that model instead of a fresh one."""
    if preset["model"] != "panoptic_deeplab":
        raise UsageError(f"training is implemented for panoptic_deeplab presets, not '{preset['model']}'")
    cfg = {**TRAIN_DEFAULTS, **(preset.get("train") or {})}
    cfg.update({k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "lr": lr}.items() if v is not None})
    net = init or PANOPTIC_MODELS.build(preset["model"], backbone=preset.get("backbone"), **(preset.get("args") or {}))
    train_set = PanopticDataset(data, targets=True, flip=True)
    categories = categories_from_preset(preset)
    if [c["id"] for c in categories] != [c["id"] for c in train_set.categories]:
        raise UsageError(f"the dataset's categories {[c['name'] for c in train_set.categories]} are not the "
                         f"preset's {[c['name'] for c in categories]}; write a preset with its classes")
    val_set = PanopticDataset(val) if val is not None else None
    summary = train(net, train_set, loss_fn=deeplab_loss(cfg["top_k"], cfg["center_weight"], cfg["offset_weight"]),
                    val_dataset=val_set, metric=image_pq_metric(train_set.categories) if val_set else None,
                    work_dir=work_dir, epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                    schedule=cfg["schedule"], resume=resume, seed=seed, num_workers=num_workers, progress=progress)
    if summary["best_checkpoint"]:
        best = torch.load(Path(work_dir) / BEST, map_location="cpu", weights_only=True)
        net.load_state_dict(best["state_dict"])
    summary["skipped_samples"] = train_set.skipped
    if int(os.environ.get("RANK", "0")) == 0:
        export = Path(export) if export else Path(work_dir) / f"{preset.get('name', 'panoptic')}.safetensors"
        summary["weights"] = str(save_weights(net, export, preset=preset))
    summary["model"] = net.eval()
    return summary
