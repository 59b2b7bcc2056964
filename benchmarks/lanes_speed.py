"""SCNN speed: frames/s at CULane (800x288) and TuSimple (512x288) sizes, batch 1 and 8, eager vs
deploy; the share of time spent in message passing; the fast sweep against the plain recursion
(with their largest difference); and the video pipeline against the model alone.

    python benchmarks/lanes_speed.py [--backbone vgg16_bn_scnn] [--repeat 3] [--threads N]

Prints one JSON line. All ratios are measured in the same run (absolute numbers on a shared CPU
are noisy).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from cvkit.tasks.lanes.scnn import build_scnn
from cvkit.tasks.lanes.synthetic import render_scene
from cvkit.tasks.lanes.task import LanesTask

from cvkit.engine.run import run
from cvkit.media import Frame
from cvkit.nn import deploy


def _time(fn, arg, repeat: int) -> float:
    """Best of `repeat` timings of fn(arg), after one warm-up call."""
    fn(arg)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - start)
    return best


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="vgg16_bn_scnn")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--video-frames", type=int, default=16)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = {"backbone": a.backbone, "threads": torch.get_num_threads()}
    for name, size in (("culane", (800, 288)), ("tusimple", (512, 288))):
        model = build_scnn(a.backbone, input_size=size).eval()
        fused = deploy(model)
        w, h = size
        for batch in (1, 8):
            x = torch.randn(batch, 3, h, w)
            eager = _time(model, x, a.repeat)
            dep = _time(fused, x, a.repeat)
            out[f"{name}_b{batch}"] = {"eager_fps": round(batch / eager, 2), "deploy_fps": round(batch / dep, 2),
                                       "deploy_speedup": round(eager / dep, 3)}
        x = torch.randn(1, 3, h, w)
        feats = fused.head.layer1(fused.backbone(x)[0])
        mp = fused.head.message_passing
        fast = _time(mp, feats, a.repeat)
        plain = _time(mp.forward_plain, feats, a.repeat)
        whole = _time(fused, x, a.repeat)
        out[f"{name}_message_passing"] = {
            "share_of_forward": round(fast / whole, 3), "fast_ms": round(1000 * fast, 2),
            "plain_ms": round(1000 * plain, 2), "speedup": round(plain / fast, 3),
            "max_abs_diff": float((mp(feats) - mp.forward_plain(feats)).abs().max())}

    # Video pipeline vs model only, at the TuSimple size with the default (synthetic) preset's shape.
    task = LanesTask(deploy(build_scnn(a.backbone, input_size=(512, 288)).eval()))
    frames = [render_scene(np.random.default_rng(k), (288, 512)).image for k in range(a.video_frames)]
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        with av.open(str(clip), "w") as c:
            s = c.add_stream("libx264", rate=25)
            s.width, s.height, s.pix_fmt = 512, 288, "yuv420p"
            for f in frames:
                c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            c.mux(s.encode(None))

        def model_only(images):
            for f in images:
                batch, metas = task.preprocess([Frame(image=f, source="clip")])
                task.postprocess(task.forward(batch), metas)

        t_model = _time(model_only, frames, 1)
        summary = run(task, str(clip), out=Path(tmp) / "out", progress=False)
        out["video"] = {"model_only_fps": round(len(frames) / t_model, 2), "pipeline_fps": round(summary.fps, 2),
                        "pipeline_vs_model": round(summary.fps * t_model / len(frames), 3)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
