"""The detect Task: any detector of build.py through the media pipeline.

Pre-processing follows the model's test recipe (build.InputRecipe): resize (keeping the aspect
ratio, then zero-padding at the bottom and right to a multiple of `pad_divisor`, or a plain
resize), normalise; post-processing (postprocess.py) maps the boxes back to original pixels.
Each result is a `DetectResult`; the task also keeps COCO results records (image_id,
category_id, bbox xywh, score) for `cvkit detect` to write as coco_results.json at the end.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from cvkit.engine.task import TASKS, Task
from cvkit.errors import CvkitError, UsageError
from cvkit.presets import preset_weights
from cvkit.registry import closest
from cvkit.weights import load_weights

from .build import COCO_CATEGORY_IDS, COCO_CLASSES, InputRecipe, build_from_preset
from .checkpoint import MODEL_KEYS, checkpoint_meta, load_detector_weights
from .detector import Detector
from .draw import draw_detections
from .end2end import EndToEndDetector, check_settings, exported_config
from .postprocess import DetectConfig
from .transforms import pad_image, resize_image


@dataclass
class DetectResult:
    """Boxes (N, 4) float32 x1y1x2y2 in original pixels, scores (N,), labels (N,) int64, best
    first; `names` the model's class names; `image_id` the COCO image id given to the frame."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]
    image_id: int

    def __len__(self) -> int:
        return len(self.scores)


def preprocess_images(images: Sequence[np.ndarray], recipe: InputRecipe) -> tuple[torch.Tensor, list[dict]]:
    """RGB uint8 images of one size -> normalised NCHW batch and per-image metas for postprocess."""
    mean, std = np.asarray(recipe.mean, np.float32), np.asarray(recipe.std, np.float32)
    arrays, metas = [], []
    for img in images:
        h, w = img.shape[:2]
        resized, (sx, sy) = resize_image(img, recipe.size, recipe.keep_ratio)
        rh, rw = resized.shape[:2]
        d = recipe.pad_divisor
        norm = (resized.astype(np.float32) - mean) / std
        arrays.append(pad_image(norm, (-(-rh // d) * d, -(-rw // d) * d)))
        metas.append({"img_shape": (rh, rw), "scale_factor": (sx, sy), "pad": (0, 0), "ori_shape": (h, w)})
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return batch, metas


def resolve_classes(names: list[str], wanted: str | Sequence[str] | None) -> tuple[int, ...] | None:
    """Class indices for `--classes` (comma-separated names or a list); UsageError for a name the
    model lacks."""
    if wanted is None:
        return None
    items = [w.strip() for w in (wanted.split(",") if isinstance(wanted, str) else wanted) if w.strip()]
    lookup = {n.lower(): i for i, n in enumerate(names)}
    out = []
    for item in items:
        if item.lower() not in lookup:
            hint = closest(item, names)
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise UsageError(
                f"--classes: the model has no class '{item}'"
                + (f" (did you mean '{hint}'?)" if hint else "")
                + f"; its classes: {shown}"
            )
        out.append(lookup[item.lower()])
    return tuple(out)


def custom_preset(preset: dict, backbone: str | None, neck: str | None, head: str | None) -> dict:
    """The preset with its model replaced by --backbone/--neck/--head: COCO's 80 classes, random
    init unless --weights (a cvkit weights file brings its own classes)."""
    same = preset.get("model") == "detector"
    out = {
        **preset,
        "name": f"{backbone or preset.get('backbone')}_{neck or 'fpn'}_{head or 'retinanet'}",
        "model": "detector",
        "backbone": backbone or preset.get("backbone"),
        "neck": neck or (preset.get("neck") if same else "fpn"),
        "head": head or (preset.get("head") if same else "retinanet"),
        "args": {},
        "imgsz": None,
        "weights": None,
        "classes": None,
    }
    if not out["backbone"]:
        raise UsageError("--neck/--head need --backbone (or a preset with a backbone)")
    return out


@TASKS.register("detect")
class DetectTask(Task):
    """Object detection: boxes, scores and class labels per frame."""

    name = "detect"

    def __init__(
        self,
        model: Detector,
        preset: dict | None = None,
        *,
        recipe: InputRecipe,
        names: list[str],
        cfg: DetectConfig,
        category_ids: Sequence[int] | None = None,
    ):
        super().__init__(model, preset)
        if len(names) != model.num_classes:
            raise CvkitError(f"{len(names)} class names for a model with {model.num_classes} classes")
        self.recipe, self.names, self.cfg = recipe, list(names), cfg
        self.category_ids = list(
            category_ids or (COCO_CATEGORY_IDS if tuple(names) == COCO_CLASSES else range(1, len(names) + 1))
        )
        self.records: list[dict] = []
        self._frames = 0

    @classmethod
    def from_preset(
        cls,
        preset: dict,
        weights: str | None = None,
        *,
        backbone: str | None = None,
        neck: str | None = None,
        head: str | None = None,
        conf: float | None = None,
        iou: float | None = None,
        classes: str | Sequence[str] | None = None,
        max_det: int | None = None,
    ) -> DetectTask:
        if backbone or neck or head:
            preset = custom_preset(preset, backbone, neck, head)
        args = preset.get("args") or {}
        conf = args.get("conf") if conf is None else conf
        iou = args.get("iou") if iou is None else iou
        max_det = args.get("max_det") if max_det is None else max_det
        location, sha = preset_weights(preset)
        if weights is not None:
            location, sha = weights, None
        trained = checkpoint_meta(location) if location and str(location).lower() != "none" else {}
        if trained:
            preset = {
                **preset,
                **{k: None for k in MODEL_KEYS},
                **trained.get("preset", {}),
                "classes": trained["classes"],
            }
        model, recipe, names, converter = build_from_preset(preset)
        if location is not None and str(location).lower() != "none":
            load_detector_weights(model, location, None if trained else converter, sha)
        else:
            load_weights(model, "none")
        cfg = model.head.test_cfg
        for value, flag in ((conf, "--conf"), (iou, "--iou")):
            if value is not None and not 0 <= value <= 1:
                raise UsageError(f"{flag} must be in [0, 1], got {value}")
        if max_det is not None and max_det < 1:
            raise UsageError(f"--max-det must be >= 1, got {max_det}")
        cfg = replace(
            cfg,
            score_thr=cfg.score_thr if conf is None else conf,
            iou_threshold=cfg.iou_threshold if iou is None else iou,
            max_per_img=cfg.max_per_img if max_det is None else max_det,
            classes=resolve_classes(names, classes),
        )
        # The preset records the settings the task runs with, so that its exported files keep them.
        settings = {"conf": cfg.score_thr, "iou": cfg.iou_threshold, "max_det": cfg.max_per_img}
        preset = {**preset, "args": {**(preset.get("args") or {}), **settings}}
        return cls(
            model, preset, recipe=recipe, names=names, cfg=cfg, category_ids=trained.get("category_ids")
        )

    # -- inference --------------------------------------------------------------------------
    def preprocess(self, frames: Sequence) -> tuple[torch.Tensor, list[dict]]:
        batch, metas = preprocess_images([f.image for f in frames], self.recipe)
        for f, meta in zip(frames, metas):
            meta["image_id"] = self._image_id(f)
        return batch, metas

    def _image_id(self, frame) -> int:
        """A still's numeric file stem (COCO's 000000397133.jpg -> 397133), else a running count."""
        self._frames += 1
        stem = re.sub(r"\.[^.]*$", "", str(frame.source).replace("\\", "/").rsplit("/", 1)[-1])
        if frame.timestamp is None and stem.isdigit():
            return int(stem)
        return self._frames

    def postprocess(self, raw: Any, metas: list[dict]) -> list[DetectResult]:
        results = []
        for det, meta in zip(self.model.predict(raw, metas, self.cfg), metas):
            res = DetectResult(
                det.boxes.float().numpy(),
                det.scores.float().numpy(),
                det.labels.numpy().astype(np.int64),
                self.names,
                meta["image_id"],
            )
            self.records.extend(self.coco_records(res))
            results.append(res)
        return results

    def coco_records(self, res: DetectResult) -> list[dict]:
        """COCO results entries (bbox x, y, w, h) of one frame."""
        return [
            {
                "image_id": res.image_id,
                "category_id": int(self.category_ids[int(label)]),
                "bbox": [
                    round(float(x1), 2),
                    round(float(y1), 2),
                    round(float(x2 - x1), 2),
                    round(float(y2 - y1), 2),
                ],
                "score": round(float(s), 5),
            }
            for (x1, y1, x2, y2), s, label in zip(res.boxes, res.scores, res.labels)
        ]

    def export_model(self, nms: bool = True, config: dict | None = None) -> torch.nn.Module:
        """For `cvkit export --nms`: the model with decoding and NMS in the graph (end2end.py), with
        this task's settings; with `config` (the `postprocess` metadata of a file exported so), the
        stand-in whose `predict` runs that file's outputs with this task's settings (refused where
        they ask for detections the file has dropped)."""
        if not nms:
            return self.model
        if config is None:
            return EndToEndDetector(self.model, self.cfg)
        exported = exported_config(config)
        check_settings(exported, self.cfg)
        return EndToEndDetector(self.model, exported)

    # -- output ------------------------------------------------------------------------------
    def render(self, frame, result: DetectResult) -> np.ndarray:
        return draw_detections(frame.image, result.boxes, result.scores, result.labels, self.names)

    def serialise(self, result: DetectResult) -> dict[str, Any]:
        return {
            "image_id": result.image_id,
            "detections": [
                {
                    "box": [round(float(v), 2) for v in box],
                    "score": round(float(s), 5),
                    "label": int(label),
                    "name": self.names[int(label)],
                }
                for box, s, label in zip(result.boxes, result.scores, result.labels)
            ],
        }


__all__ = ["DetectResult", "DetectTask", "preprocess_images", "resolve_classes"]
