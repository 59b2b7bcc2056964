"""Train SCNN on synthetic road scenes to convergence and report CULane F1 and the time it took.

    python benchmarks/lanes_train.py --out runs/bench_lanes [--train 480 --val 48 --epochs 6]

Writes the dataset (cvkit.tasks.lanes.synthetic), trains the `scnn_synthetic` preset's model
(MobileNetV2 to stride 8, slim SCNN head, 256x144 input) with `cvkit.engine.train`, evaluates the
best checkpoint and the untrained model on the validation scenes with the CULane protocol, and
prints one JSON line (also written to OUT/result.json). The shipped `cvkit/assets/
scnn_synthetic.safetensors` is this script's output with the defaults (see the preset's
`trained_by`).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from cvkit.tasks.lanes.evaluate import evaluate_model
from cvkit.tasks.lanes.synthetic import write_dataset
from cvkit.tasks.lanes.task import build_model
from cvkit.tasks.lanes.training import train_lanes

from cvkit.presets import load_preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_lanes"))
    ap.add_argument("--preset", default="scnn_synthetic")
    ap.add_argument("--train", type=int, default=480)
    ap.add_argument("--val", type=int, default=48)
    ap.add_argument("--size", type=int, nargs=2, default=(144, 256), metavar=("H", "W"))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    preset = load_preset(a.preset, task="lanes")

    start = time.perf_counter()
    data = write_dataset(a.out / "data", a.train, a.val, tuple(a.size), seed=0)
    made = time.perf_counter()
    summary = train_lanes(preset, data, work_dir=a.out / "train", epochs=a.epochs, batch_size=a.batch_size,
                          lr=a.lr, export=a.out / f"{preset['name']}.safetensors", progress=False)
    trained = time.perf_counter()

    model = build_model(preset)
    untrained = evaluate_model(model.eval(), data, progress=False)
    model.load_state_dict(torch.load(a.out / "train" / "best.pth", weights_only=True)["state_dict"])
    result = evaluate_model(model.eval(), data, progress=False)
    out = {"preset": preset["name"], "train_images": a.train, "val_images": a.val, "size": list(a.size),
           "epochs": summary["epochs"], "iterations": summary["epochs"] * (a.train // a.batch_size),
           "best_epoch": summary["best_epoch"], "F1": result["F"], "precision": result["precision"],
           "recall": result["recall"], "F1_untrained": untrained["F"],
           "data_s": round(made - start, 1), "train_s": round(trained - made, 1),
           "ms_per_image_eval": round(result["ms_per_image"], 2), "weights": summary["weights"],
           "history": [{k: round(v, 4) for k, v in h.items()} for h in summary["history"]]}
    (a.out / "result.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "history"}))


if __name__ == "__main__":
    main()
