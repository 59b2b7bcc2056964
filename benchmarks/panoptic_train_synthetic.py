"""Train the `panoptic_deeplab_synthetic` model on generated scenes and report PQ and wall time.

    python benchmarks/panoptic_train_synthetic.py --out runs/panoptic_bench [--train 400 --epochs 12]

Writes the scenes, the engine's run folder, the exported weights (float16 with --half, as shipped
in cvkit/assets) and `result.json` (PQ / SQ / RQ of the untrained and trained model on a held-out
set, training seconds).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from cvkit.tasks.panoptic.data import make_synthetic
from cvkit.tasks.panoptic.models import PANOPTIC_MODELS
from cvkit.tasks.panoptic.training import evaluate_panoptic, save_weights, train_panoptic

from cvkit.presets import load_preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", type=int, default=400, help="training scenes")
    ap.add_argument("--val", type=int, default=48, help="held-out scenes")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--half", action="store_true", help="also export float16 weights")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    preset = load_preset("panoptic_deeplab_synthetic")
    make_synthetic(a.out / "train", a.train, size=a.size, seed=0)
    make_synthetic(a.out / "val", a.val, size=a.size, seed=1)
    torch.manual_seed(0)
    untrained = PANOPTIC_MODELS.build(preset["model"], backbone=preset["backbone"], **preset["args"])
    before = evaluate_panoptic(untrained, a.out / "val", progress=False)
    start = time.perf_counter()
    summary = train_panoptic(preset, a.out / "train", a.out / "val", work_dir=a.out / "run", epochs=a.epochs,
                             batch_size=a.batch_size, lr=a.lr, progress=False)
    seconds = time.perf_counter() - start
    model = summary.pop("model")
    after = evaluate_panoptic(model, a.out / "val", progress=False)
    if a.half:
        save_weights(model, a.out / "panoptic_deeplab_synthetic.safetensors", preset=preset, half=True)
    keys = ("All", "Things", "Stuff")
    result = {"train_seconds": seconds, "epochs": summary["epochs"], "best_epoch": summary["best_epoch"],
              "untrained": {k: before[k] for k in keys}, "trained": {k: after[k] for k in keys},
              "per_class": after["per_class"]}
    (a.out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("train_seconds", "untrained", "trained")}, indent=1))


if __name__ == "__main__":
    main()
