"""Train a detector on synthetic shapes to convergence and report COCO mAP / mAP50 and the time.

Regenerates cvkit's shipped `retinanet_shapes` weights (float16). They were trained from scratch
in stages on this shared 2-core machine (one thread), each continuing from the previous file:

    python benchmarks/detect_train.py --epochs 12 --lr 2e-3 --export /tmp/stage1.safetensors
    python benchmarks/detect_train.py --epochs 16 --lr 1e-3 --init /tmp/stage1.safetensors \
        --export /tmp/stage2.safetensors
    python benchmarks/detect_train.py --epochs 10 --lr 5e-4 --train-images 1200 \
        --init /tmp/stage2.safetensors --export cvkit/assets/retinanet_shapes.safetensors

The shapes datasets (tasks/detect/synthetic.py) are drawn into the run folder with fixed seeds
(train, validation and test differ); training runs on `cvkit.engine.train` with the preset's
recipe and keeps the epoch with the best per-image AP50 on the validation set; the final lines
evaluate the exported file with pycocotools on the held-out test set. Target: mAP50 >= 0.9.
Results: benchmarks/results/detect_train.json (a list, one entry per run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from cvkit.tasks.detect.data import load_dataset
from cvkit.tasks.detect.synthetic import make_shapes_dataset
from cvkit.tasks.detect.task import DetectTask
from cvkit.tasks.detect.training import evaluate_coco, train_detect

from cvkit.media.sinks import next_run_dir
from cvkit.presets import load_preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="retinanet_shapes")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--train-images", type=int, default=800)
    ap.add_argument("--val-images", type=int, default=100)
    ap.add_argument("--test-images", type=int, default=200)
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy CPU)")
    ap.add_argument("--export", default=None, help="Where to write the weights (float16 safetensors).")
    ap.add_argument("--init", default=None, help="Continue from these weights (same model and classes).")
    ap.add_argument("--project", default="runs/bench")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    run = next_run_dir(args.project, "detect_train")
    run.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (
        ("train", args.train_images, 1),
        ("val", args.val_images, 2),
        ("test", args.test_images, 3),
    ):
        make_shapes_dataset(run / split, n, size=args.imgsz, seed=seed)
    preset = load_preset(args.preset)
    start = time.perf_counter()
    summary = train_detect(
        preset,
        load_dataset(run / "train"),
        load_dataset(run / "val"),
        work_dir=run / "work",
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        imgsz=args.imgsz,
        export=args.export,
        half=args.export is not None,
        init=args.init,
    )
    seconds = time.perf_counter() - start
    task = DetectTask.from_preset(preset, weights=summary["weights"])
    stats = evaluate_coco(task, load_dataset(run / "test"), run / "eval", score_thr=0.05)
    result = {
        "preset": args.preset,
        "epochs": summary["epochs"],
        "train_images": args.train_images,
        "train_seconds": round(seconds, 1),
        "threads": args.threads,
        "init": args.init,
        "weights": summary["weights"],
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()},
    }
    print(json.dumps(result, indent=1))
    out = Path(__file__).parent / "results" / "detect_train.json"
    runs = json.loads(out.read_text()) if out.is_file() else []
    out.write_text(json.dumps([*runs, result], indent=1) + "\n")
    print(
        f"mAP50 {stats['AP50']:.3f} (target >= 0.9), mAP {stats['AP']:.3f}, trained in {seconds / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
