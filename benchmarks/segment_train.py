"""Train an FCN on cvkit's synthetic scenes to convergence and report mIoU and the time it took.

Regenerates the shipped `fcn8s_synthetic` weights (FCN-8s on MobileNetV2 truncated at stride 16,
4 classes, trained from scratch) with the budget stated on the command line:

    python benchmarks/segment_train.py --epochs 18 --export cvkit/assets/fcn8s_synthetic.safetensors

Scenes come from `cvkit.tasks.segment.synthetic` (a fixed seed each for the training and validation
sets). Training runs on `cvkit.engine.train` with mmseg's augmentations; the best epoch (per-image mIoU
on the validation set) is kept. The report gives the dataset-level mIoU / mAcc / aAcc (mmseg's
IoUMetric) of the untrained and the trained model, the per-class IoU, and the wall-clock time; it is
also written to benchmarks/results/segment_train.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from cvkit.tasks.segment.build import build_model
from cvkit.tasks.segment.data import SegDataset
from cvkit.tasks.segment.datasets_meta import class_set
from cvkit.tasks.segment.synthetic import NUM_CLASSES, write_dataset
from cvkit.tasks.segment.training import evaluate_segment, format_table, train_segment

RESULTS = Path(__file__).resolve().parent / "results" / "segment_train.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fcn8s")
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--out-indices", default="0,1,2", help="backbone outputs ('' for all)")
    ap.add_argument("--train-count", type=int, default=400)
    ap.add_argument("--val-count", type=int, default=60)
    ap.add_argument("--size", type=int, default=128, help="scene side in pixels")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--export", type=Path, default=None, help="write the weights here (fp16 safetensors)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_dataset(tmp / "train", args.train_count, size=args.size, seed=0)
        write_dataset(tmp / "val", args.val_count, size=args.size, seed=1)
        model_args = {"num_classes": NUM_CLASSES}
        if args.out_indices:
            model_args["out_indices"] = [int(i) for i in args.out_indices.split(",")]
        spec = {"name": "fcn8s_synthetic", "model": args.model, "backbone": args.backbone, "args": model_args,
                "classes": "synthetic"}
        val = SegDataset(tmp / "val", NUM_CLASSES, split="val")
        torch.manual_seed(0)
        untrained = evaluate_segment(build_model(spec), val, progress=False).summary()
        start = time.perf_counter()
        summary = train_segment(spec, tmp / "train", tmp / "val", work_dir=tmp / "run", epochs=args.epochs,
                                batch_size=args.batch_size, crop=args.crop, lr=args.lr,
                                train_cfg={"scale": [args.size, args.size]}, export=args.export or tmp / "w.safetensors",
                                half=True, progress=False)
        seconds = time.perf_counter() - start
        from cvkit.tasks.segment.build import load_segment_weights
        from cvkit.tasks.segment.task import resolve_spec
        spec2, _, _ = resolve_spec({"model": args.model}, summary["weights"])
        model = build_model(spec2)
        load_segment_weights(model, summary["weights"])
        metric = evaluate_segment(model, val, progress=False)
    trained = metric.summary()
    print(format_table(metric, class_set("synthetic")))
    report = {"model": args.model, "backbone": args.backbone, "args": model_args, "size": args.size,
              "train_images": args.train_count, "val_images": args.val_count, "epochs": summary["epochs"],
              "best_epoch": summary["best_epoch"], "batch_size": args.batch_size, "lr": args.lr,
              "threads": args.threads, "train_seconds": round(seconds, 1), "untrained": untrained,
              "trained": trained, "per_class_iou": {n: round(float(v) * 100, 2) for n, v in
                                                    zip(class_set("synthetic").classes, metric.per_class()["IoU"])}}
    if args.export:
        report["weights"] = str(args.export)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(f"untrained mIoU {untrained['mIoU']:.2f} -> trained mIoU {trained['mIoU']:.2f} "
          f"(aAcc {trained['aAcc']:.2f}) in {seconds / 60:.1f} min; report in {RESULTS}")


if __name__ == "__main__":
    main()
