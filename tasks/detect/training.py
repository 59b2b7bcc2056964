"""Training and COCO evaluation of detectors.

- `DetectionDataset`: a DetectionSet as tensors for `cvkit.engine.train`: the augmentations of the
  model's recipe (transforms.py), the resize of the model's input recipe, padded to a fixed size;
  boxes and labels padded to `max_boxes` (label -1 = padding) so batches collate.
- `detect_loss` / `ap50_metric`: the engine's loss and validation callables (the per-image AP50 is
  a cheap proxy that picks the best epoch; `evaluate_coco` gives the real COCO numbers).
- `train_detect`: a preset's detector (its class count from the dataset) trained on a dataset.
- `evaluate_coco`: COCO mAP with pycocotools (AP, AP50, AP75, small/medium/large) of a task on a
  dataset, and the precision-recall curves as a PNG.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from cvkit.engine.train import BEST, train
from cvkit.errors import CvkitError, UsageError
from cvkit.nn.nms import box_iou

from .build import InputRecipe, build_from_preset
from .checkpoint import load_detector_weights, save_weights
from .data import DetectionSet, read_rgb
from .transforms import pad_image, resize_image, train_pipeline

TRAIN_DEFAULTS = {"epochs": 12, "batch_size": 8, "lr": 1e-3, "schedule": "cosine", "max_boxes": 100}


class DetectionDataset(Dataset):
    """Samples of `ds` resized (and, with `augment`, augmented) for the model's input `recipe`:
    dicts with `image` (3, H, W) normalised, `boxes` (max_boxes, 4) in input pixels, `labels`
    (max_boxes,) with -1 padding, `index`. An unreadable image is replaced by the next one, with a
    warning, and counted in `unreadable`."""

    def __init__(
        self,
        ds: DetectionSet,
        recipe: InputRecipe,
        *,
        augment: str | None = None,
        max_boxes: int = 100,
        seed: int = 0,
    ):
        if not ds.samples:
            raise CvkitError(f"{ds.root}: no usable images")
        self.ds, self.recipe, self.max_boxes = ds, recipe, max_boxes
        self.augment = train_pipeline(augment, recipe.mean) if augment else []
        self.rng = np.random.default_rng(seed)
        self.unreadable: set[int] = set()
        self.mean = np.asarray(recipe.mean, np.float32)
        self.std = np.asarray(recipe.std, np.float32)

    def __len__(self) -> int:
        return len(self.ds.samples)

    def __getitem__(self, index: int) -> dict:
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            image = read_rgb(self.ds.samples[i].file)
            if image is not None:
                return self._prepare(i, image)
            if i not in self.unreadable:
                self.unreadable.add(i)
                warnings.warn(f"skipping unreadable image {self.ds.samples[i].file}", stacklevel=2)
        raise CvkitError(f"{self.ds.root}: no image could be read")

    def _prepare(self, i: int, image: np.ndarray) -> dict:
        s = self.ds.samples[i]
        img, boxes, labels = image.astype(np.float32), s.boxes.copy(), s.labels.copy()
        for t in self.augment:
            img, boxes, labels = t(img, boxes, labels, self.rng)
        img, (sx, sy) = resize_image(img, self.recipe.size, self.recipe.keep_ratio)
        boxes = boxes * np.array([sx, sy, sx, sy], np.float32)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
        boxes, labels = boxes[keep][: self.max_boxes], labels[keep][: self.max_boxes]
        img = pad_image((img - self.mean) / self.std, self.recipe.size)
        padded_boxes = np.zeros((self.max_boxes, 4), np.float32)
        padded_labels = np.full((self.max_boxes,), -1, np.int64)
        padded_boxes[: len(boxes)], padded_labels[: len(labels)] = boxes, labels
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
            "boxes": torch.from_numpy(padded_boxes),
            "labels": torch.from_numpy(padded_labels),
            "index": i,
        }


def unpad_targets(batch: dict) -> list[dict]:
    """Per-image {"boxes", "labels"} without the padding."""
    out = []
    for boxes, labels in zip(batch["boxes"], batch["labels"]):
        valid = labels >= 0
        out.append({"boxes": boxes[valid], "labels": labels[valid]})
    return out


def detect_loss(model: nn.Module, batch: dict) -> dict:
    """The head's losses on a collated DetectionDataset batch."""
    raw = model(batch["image"])
    raw = ([r.float() for r in raw[0]], [r.float() for r in raw[1]])
    return model.loss(raw, unpad_targets(batch))


def image_ap50(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
) -> float:
    """AP at IoU 0.5 of one image's detections (all classes pooled, greedy matching by score)."""
    if len(gt_boxes) == 0:
        return 1.0 if len(boxes) == 0 else 0.0
    if len(boxes) == 0:
        return 0.0
    order = scores.argsort(descending=True)
    iou = box_iou(boxes[order], gt_boxes)
    iou[labels[order][:, None] != gt_labels[None, :]] = 0
    matched = torch.zeros(len(gt_boxes), dtype=torch.bool)
    tp = torch.zeros(len(boxes))
    for d in range(len(boxes)):
        cand = iou[d].clone()
        cand[matched] = 0
        best = int(cand.argmax())
        if cand[best] >= 0.5:
            matched[best], tp[d] = True, 1
    recall = tp.cumsum(0) / len(gt_boxes)
    precision = tp.cumsum(0) / torch.arange(1, len(tp) + 1)
    precision = torch.flip(torch.cummax(torch.flip(precision, [0]), 0).values, [0])
    steps = torch.diff(recall, prepend=torch.zeros(1))
    return float((steps * precision).sum())


def ap50_metric(model: nn.Module, batch: dict) -> list[dict]:
    """Per-image AP50 in network-input pixels (validation callable of the engine)."""
    raw = model(batch["image"])
    h, w = batch["image"].shape[-2:]
    dets = model.predict(raw, [{"img_shape": (h, w)}] * len(batch["image"]))
    return [
        {"ap50": image_ap50(d.boxes, d.scores, d.labels, t["boxes"], t["labels"])}
        for d, t in zip(dets, unpad_targets(batch))
    ]


def train_detect(
    preset: dict,
    train_set: DetectionSet,
    val_set: DetectionSet | None = None,
    *,
    work_dir: str | Path,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    imgsz: int | None = None,
    augment: str | None = None,
    resume: bool = False,
    bf16: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    launcher: str = "auto",
    progress: bool = True,
    export: str | Path | None = None,
    half: bool = False,
    init: str | Path | None = None,
) -> dict:
    """Train the preset's detector with as many classes as `train_set` has; validate on `val_set`
    each epoch (per-image AP50); `init` starts from a checkpoint of the same model. Writes the
    engine's checkpoints to `work_dir` and the best (or last) weights as a cvkit safetensors file
    carrying the preset and class names to `export` (default `work_dir/<name>.safetensors`).
    Returns the engine's summary plus `weights`."""
    cfg = {**TRAIN_DEFAULTS, **(preset.get("train") or {})}
    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "augment": augment}
    cfg.update({k: v for k, v in given.items() if v is not None})
    preset = {**preset, "classes": list(train_set.classes)}
    if imgsz is not None:
        preset["imgsz"] = imgsz
    args = dict(preset.get("args") or {})
    args.pop("num_classes", None)
    preset["args"] = args
    torch.manual_seed(seed)  # the initial weights follow `seed` too (the engine seeds only from here on)
    model, recipe, names, _ = build_from_preset(preset, num_classes=len(train_set.classes))
    if init is not None:
        load_detector_weights(model, str(init))
    recipe_name = cfg.get("augment") or (
        "ssd" if preset.get("head") in ("ssd", "ssdlite") or "ssd" in preset["model"] else "retinanet"
    )
    data = DetectionDataset(train_set, recipe, augment=recipe_name, max_boxes=cfg["max_boxes"], seed=seed)
    val = DetectionDataset(val_set, recipe, max_boxes=cfg["max_boxes"]) if val_set is not None else None
    summary = train(
        model,
        data,
        loss_fn=detect_loss,
        val_dataset=val,
        metric=ap50_metric if val is not None else None,
        work_dir=work_dir,
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        schedule=cfg["schedule"],
        resume=resume,
        bf16=bf16,
        seed=seed,
        num_workers=num_workers,
        launcher=launcher,
        progress=progress,
    )
    if summary["best_checkpoint"]:
        best = torch.load(Path(work_dir) / BEST, map_location="cpu", weights_only=True)
        model.load_state_dict(best["state_dict"])
    summary["skipped_samples"] = train_set.skipped
    if int(os.environ.get("RANK", "0")) == 0:
        export = Path(export) if export else Path(work_dir) / f"{preset.get('name', 'detector')}.safetensors"
        summary["weights"] = str(
            save_weights(
                model, export, preset=preset, classes=names, category_ids=train_set.category_ids, half=half
            )
        )
    return summary


# -- COCO evaluation ----------------------------------------------------------------------------


def coco_ground_truth(ds: DetectionSet) -> dict:
    """An in-memory COCO annotations dict of `ds` (ignored regions as iscrowd), ids 1..K."""
    images, anns = [], []
    for s in ds.samples:
        images.append({"id": s.image_id, "width": s.width, "height": s.height, "file_name": s.file.name})
        for boxes, labels, crowd in ((s.boxes, s.labels, 0), (s.ignore, np.zeros(len(s.ignore), int), 1)):
            for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist()):
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": s.image_id,
                        "category_id": int(label) + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": crowd,
                    }
                )
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(ds.classes)]
    return {"images": images, "annotations": anns, "categories": cats}


@torch.inference_mode()
def predict_dataset(task, ds: DetectionSet, progress: bool = True) -> list[dict]:
    """COCO results (category ids 1..K in label order) of `task` on every readable image of `ds`."""
    from tqdm import tqdm

    from .task import preprocess_images

    task.model.eval()
    results = []
    for s in tqdm(ds.samples, desc="detect", disable=not progress, leave=False):
        image = read_rgb(s.file)
        if image is None:
            warnings.warn(f"skipping unreadable image {s.file}", stacklevel=2)
            continue
        batch, metas = preprocess_images([image], task.recipe)
        det = task.model.predict(task.model(batch), metas, task.cfg)[0]
        for (x1, y1, x2, y2), score, label in zip(
            det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()
        ):
            results.append(
                {
                    "image_id": s.image_id,
                    "category_id": int(label) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    return results


COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_map(gt: dict, results: list[dict]) -> tuple[dict, np.ndarray | None]:
    """pycocotools bbox evaluation: {AP, AP50, AP75, APs, APm, APl} (None where the dataset has no
    object of that size) and the precision array
    (IoU thresholds x 101 recall points x classes x areas x max dets), None without detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {k: 0.0 for k in COCO_KEYS}, None
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {k: float(v) if v >= 0 else None for k, v in zip(COCO_KEYS, ev.stats[:6])}
    return stats, ev.eval["precision"]


def plot_pr_curve(precision: np.ndarray | None, path: str | Path, title: str = "") -> Path:
    """Precision vs recall at IoU 0.5, 0.75 and averaged over 0.5:0.95 (all areas, 100 detections,
    mean over classes with ground truth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recall = np.linspace(0, 1, 101)
    fig, ax = plt.subplots(figsize=(5, 4))
    if precision is not None:
        p = precision[:, :, :, 0, -1]  # (T, R, K)

        def mean_valid(a):
            a = np.where(a < 0, np.nan, a)
            return np.nanmean(a, axis=-1) if np.isfinite(a).any() else np.zeros(a.shape[0])

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ax.plot(recall, mean_valid(p[0]), label="IoU 0.50")
            ax.plot(recall, mean_valid(p[5]), label="IoU 0.75")
            ax.plot(recall, np.nanmean([mean_valid(p[t]) for t in range(len(p))], 0), label="IoU 0.50:0.95")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(title or "precision-recall")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def evaluate_coco(
    task,
    ds: DetectionSet,
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    score_thr: float | None = None,
) -> dict:
    """COCO mAP of a DetectTask on `ds` (class names must match the model's). With `out_dir`,
    writes metrics.json, detections.json (COCO results) and pr_curve.png there."""
    if list(ds.classes) != list(task.names):
        if len(ds.classes) != len(task.names):
            raise UsageError(f"the dataset has {len(ds.classes)} classes, the model {len(task.names)}")
        warnings.warn(
            f"dataset class names {ds.classes[:5]} differ from the model's {task.names[:5]}; "
            f"matching them by position",
            stacklevel=2,
        )
    if score_thr is not None:
        task.cfg = replace(task.cfg, score_thr=score_thr)
    results = predict_dataset(task, ds, progress)
    stats, precision = coco_map(coco_ground_truth(ds), results)
    stats.update(images=len(ds.samples), detections=len(results), skipped=ds.skipped)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(stats, indent=1))
        (out_dir / "detections.json").write_text(json.dumps(results))
        stats["pr_curve"] = str(
            plot_pr_curve(
                precision, out_dir / "pr_curve.png", f"{task.preset.get('name', '')} on {ds.root.name}"
            )
        )
    return stats
