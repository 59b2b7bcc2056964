"""Train FastDepth on cvkit's synthetic scenes to convergence; report delta1, RMSE and the time.

This is how the shipped `fastdepth_synthetic` weights were made (the budget is on the command
line; the defaults are the shipped run):

    python benchmarks/depth_train.py --out cvkit/assets/fastdepth_synthetic.safetensors

It renders `--train` + `--val` scenes with `cvkit.tasks.depth.synthetic` (rooms of planes and
boxes, 240x320, exact depth), trains the preset's model from scratch with `train_depth` (L1 on
valid pixels, FastDepth's augmentations, Adam + cosine, best epoch by validation delta1) and
evaluates the exported file on the validation scenes, beside a constant predictor (the training
set's mean depth). The last line gives the wall-clock time.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from cvkit.tasks.depth.data import DepthDataset, ValTransform
from cvkit.tasks.depth.models import build_depth_model, input_size
from cvkit.tasks.depth.synthetic import write_synthetic
from cvkit.tasks.depth.training import evaluate_model, frame_metrics, train_depth

from cvkit.media.sinks import next_run_dir
from cvkit.presets import load_preset


def constant_rmse(train_root: Path, val_root: Path, size: tuple[int, int]) -> float:
    """RMSE (m) on the validation scenes of predicting the training set's mean depth everywhere."""
    train_set, val_set = DepthDataset(train_root), DepthDataset(val_root, ValTransform(size))
    mean = float(np.mean(np.concatenate([d[d > 0] for d in (train_set.load(i)[1] for i in range(len(train_set)))])))
    return float(np.mean([frame_metrics(torch.full_like(it["depth"], mean)[None], it["depth"][None], "target")["rmse"]
                          for it in val_set])) / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="fastdepth_synthetic")
    ap.add_argument("--train", type=int, default=500, help="training scenes")
    ap.add_argument("--val", type=int, default=50, help="validation scenes")
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--work-dir", help="default: a fresh runs/train/depth_synthetic/exp<N>")
    ap.add_argument("--out", help="the exported .safetensors file (default: in the work dir)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the numbers to this file")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    start = time.perf_counter()
    work = Path(a.work_dir) if a.work_dir else next_run_dir("runs/train", "depth_synthetic")
    data = work / "data"
    if not (data / "val" / "rgb").is_dir():
        write_synthetic(data / "train", a.train, (240, 320), seed=a.seed)
        write_synthetic(data / "val", a.val, (240, 320), seed=a.seed + 10_000)
    rendered = time.perf_counter() - start
    preset = load_preset(a.preset, task="depth")
    s = train_depth(preset, data / "train", data / "val", work_dir=work / "train", weights="none", epochs=a.epochs,
                    batch_size=a.batch_size, lr=a.lr, seed=a.seed, export=a.out)
    trained = time.perf_counter() - start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_depth_model(preset, s["weights"]).eval()
    r = evaluate_model(model, preset, data / "val", out_dir=work, progress=False)
    result = {"preset": a.preset, "train_scenes": a.train, "val_scenes": a.val, "epochs": a.epochs,
              "imgsz": list(input_size(preset)), "threads": a.threads, "best_epoch": s["best_epoch"],
              "delta1": r["delta1"], "delta2": r["delta2"], "delta3": r["delta3"], "rmse_m": r["rmse_m"],
              "absrel": r["absrel"], "constant_rmse_m": constant_rmse(data / "train", data / "val",
                                                                    input_size(preset)),
              "render_s": round(rendered, 1), "train_s": round(trained - rendered, 1),
              "weights": s["weights"], "worst_frames": r["worst_frames"]}
    print(json.dumps(result, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"delta1 {r['delta1']:.3f}, RMSE {r['rmse_m']:.3f} m (constant predictor {result['constant_rmse_m']:.3f} m); "
          f"{time.perf_counter() - start:.0f} s in all ({rendered:.0f} s rendering)")


if __name__ == "__main__":
    main()
