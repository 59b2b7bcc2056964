"""Pipeline throughput and memory, as ratios measured in one run.

1. On a synthetic video (720p unless `--size`): model-only fps (forward on ready batches), task fps (preprocess +
   forward + postprocess on decoded frames in memory), predict fps (decode + inference) and
   pipeline fps (`run`: decode + inference + render + H.264 encode + JSON lines), with the
   ratios pipeline/model and pipeline/task. Target: pipeline >= 0.9 x model-only. CPU seconds
   per frame of each stage are reported too: on a machine shared with other jobs, wall-clock
   ratios are mostly noise, and the CPU ratio shows what the pipeline itself adds.
2. On a long synthetic video (5000 frames): RSS at frame 500 and its peak from there to the
   last frame of a full `run`; target growth < 50 MB.

The task comes from a preset (``--preset bicubic_x2 --set ...``, built by `cvkit.api.load_task`)
or from a callable given as ``module:function`` returning a Task; in Python, call
``benchmark(build_task)`` with any zero-argument callable. Without either, a 2x bicubic
stand-in defined here is used. Example:

    python benchmarks/pipeline.py --preset bicubic_x2 --json benchmarks/results/pipeline.json
    python benchmarks/pipeline.py --preset fcn8s_synthetic fastdepth_synthetic --threads 1 2 --no-rss \
        --markdown benchmarks/results/pipeline.md
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from torch import nn

from cvkit.engine.predictor import predict
from cvkit.engine.run import run
from cvkit.engine.task import Task
from cvkit.media import open_source


class Bicubic2x(Task):
    """Stand-in task: 2x bicubic upscaling of RGB frames."""

    name = "bicubic2x"
    image_ext = ".png"

    def __init__(self):
        super().__init__(nn.Upsample(scale_factor=2, mode="bicubic", align_corners=False))

    def preprocess(self, frames):
        x = torch.from_numpy(np.stack([f.image for f in frames])).permute(0, 3, 1, 2).float()
        return x, [{} for _ in frames]

    def postprocess(self, raw, metas):
        out = raw.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1)
        return [np.ascontiguousarray(o.numpy()) for o in out]

    def render(self, frame, result):
        return result

    def serialise(self, result):
        return {"height": result.shape[0], "width": result.shape[1]}


def make_video(path: Path, frames: int, width: int, height: int, fps: int = 30) -> Path:
    """A moving pattern with some texture, encoded fast (x264 ultrafast)."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 64, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "23"})
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            base = ((xx + 4 * i) % 256 // 2 + (yy // 2) % 128).astype(np.uint8)
            img = np.dstack([base, np.roll(base, i, 1), 255 - base]) // 2 + texture
            c.mux(v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(v.encode(None))
    return path


def _timed(fn, n: int) -> tuple[float, float]:
    """(frames per wall-clock second, CPU seconds per frame) of `fn` processing `n` frames."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return n / (time.perf_counter() - wall), (time.process_time() - cpu) / n


def throughput(task: Task, video: Path, out_dir: Path, *, frames: int, batch: int, repeats: int = 2) -> dict:
    """fps of the model alone, the task alone, predict() and run() on `video` (best of `repeats`
    interleaved rounds), plus CPU seconds per frame of each, which contention distorts less."""
    decoded = [f for f, _ in zip(open_source(video), range(8))]
    groups = [decoded[i % len(decoded): i % len(decoded) + batch] for i in range(0, frames, batch)]
    groups = [g for g in groups if len(g) == batch] or [decoded[:1]]
    n = len(groups) * len(groups[0])
    prepared = [task.preprocess(g)[0] for g in groups[:4]]

    def model():
        with torch.inference_mode():
            for i in range(len(groups)):
                task.forward(prepared[i % len(prepared)])

    def task_only():
        with torch.inference_mode():
            for g in groups:
                x, metas = task.preprocess(g)
                task.postprocess(task.forward(x), metas)

    def predict_only():
        for _ in predict(task, video, batch=batch, max_frames=n):
            pass

    def pipeline():
        run(task, video, out=out_dir, batch=batch, max_frames=n, progress=False)

    model()  # warm-up
    stages = {"model": model, "task": task_only, "predict": predict_only, "pipeline": pipeline}
    fps = dict.fromkeys(stages, 0.0)
    cpu = dict.fromkeys(stages, float("inf"))
    for _ in range(repeats):  # interleaved rounds, best of each: shared machines are noisy
        for name, fn in stages.items():
            f, c = _timed(fn, n)
            fps[name], cpu[name] = max(fps[name], f), min(cpu[name], c)
    return {"frames": n, "batch": batch, "repeats": repeats,
            **{f"{k}_fps": v for k, v in fps.items()}, **{f"{k}_cpu_s_per_frame": v for k, v in cpu.items()},
            "pipeline_over_model": fps["pipeline"] / fps["model"],
            "pipeline_over_task": fps["pipeline"] / fps["task"],
            "cpu_model_over_pipeline": cpu["model"] / cpu["pipeline"]}


def current_rss_mb() -> float:
    """Resident set size now (Linux /proc), else the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _RssProbe:
    """Wraps a task; samples RSS after every frame from frame `first` on."""

    def __init__(self, task: Task, first: int):
        self._task, self._first, self.seen = task, first, 0
        self.at_first: float | None = None
        self.peak_after_first = 0.0

    def __getattr__(self, name):
        return getattr(self._task, name)

    def postprocess(self, raw, metas):
        results = self._task.postprocess(raw, metas)
        self.seen += len(results)
        if self.seen >= self._first:
            rss = current_rss_mb()
            if self.at_first is None:
                self.at_first = rss
            self.peak_after_first = max(self.peak_after_first, rss)
        return results


def rss_growth(task: Task, video: Path, out_dir: Path, *, first: int = 500, batch: int = 1) -> dict:
    """RSS at frame `first` and its peak from there to the end of a full run on a long video
    (RSS sampled after every frame, so earlier stages of this process do not mask growth)."""
    probe = _RssProbe(task, first)
    summary = run(probe, video, out=out_dir, batch=batch, progress=False)
    growth = None if probe.at_first is None else probe.peak_after_first - probe.at_first
    return {"frames": summary.frames, "fps": summary.fps, f"rss_mb_at_{first}": probe.at_first,
            f"peak_rss_mb_{first}_to_{summary.frames}": probe.peak_after_first, "growth_mb": growth}


def benchmark(build_task, *, frames: int = 100, batch: int = 1, repeats: int = 2, size=(1280, 720),
              long_frames: int = 5000, long_size=(640, 360), rss: bool = True) -> dict:
    """Both measurements for the Task `build_task()` returns; a JSON-able dict."""
    task = build_task()
    report = {"task": task.name, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = make_video(tmp / "video.mp4", frames, *size)
        report["throughput"] = throughput(task, video, tmp / "out", frames=frames, batch=batch, repeats=repeats)
        if rss:
            long_video = make_video(tmp / "long.mp4", long_frames, *long_size)
            report["rss"] = rss_growth(task, long_video, tmp / "out_long", batch=batch)
    return report


def _load(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr or "build")


def markdown(reports: list[dict]) -> str:
    """One table row per (task, torch threads): fps of each stage and pipeline / model."""
    header = "| preset | video | torch threads | model fps | task fps | predict fps | pipeline fps | pipeline / model |"
    rows = [header, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in reports:
        t = r["throughput"]
        rows.append(f"| {r['preset']} | {r['video']} | {r['threads']} | {t['model_fps']:.1f} | {t['task_fps']:.1f} "
                    f"| {t['predict_fps']:.1f} | {t['pipeline_fps']:.1f} | **{t['pipeline_over_model']:.2f}** |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", nargs="+", help="build the task from these presets (names or YAML paths), "
                                               "one after the other")
    p.add_argument("--set", action="append", default=[], help="preset override key=value (repeatable)")
    p.add_argument("--weights", help="checkpoint for --preset ('none' for random init)")
    p.add_argument("--task", help="module:callable returning a Task (default: 2x bicubic stand-in)")
    p.add_argument("--frames", type=int, default=100, help="frames of the throughput video")
    p.add_argument("--size", default="1280x720", help="WxH of the throughput video")
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                   help="torch intra-op thread counts to measure each task with")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best of each is kept")
    p.add_argument("--long-frames", type=int, default=5000)
    p.add_argument("--long-size", default="640x360", help="WxH of the long video")
    p.add_argument("--no-rss", action="store_true", help="skip the long-video memory measurement")
    p.add_argument("--json", type=Path, help="also write the reports here")
    p.add_argument("--markdown", type=Path, help="also write a table of the throughput figures here")
    a = p.parse_args(argv)
    if a.preset:
        from cvkit.api import load_task

        builds = {name: (lambda name=name: load_task(name, weights=a.weights, overrides=a.set)) for name in a.preset}
    else:
        builds = {a.task or "bicubic2x": _load(a.task) if a.task else Bicubic2x}
    size = tuple(int(v) for v in a.size.lower().split("x"))
    long_size = tuple(int(v) for v in a.long_size.lower().split("x"))
    reports = []
    for name, build in builds.items():
        for threads in a.threads:
            torch.set_num_threads(threads)
            report = benchmark(build, frames=a.frames, batch=a.batch, repeats=a.repeats, size=size,
                               long_frames=a.long_frames, long_size=long_size, rss=not a.no_rss)
            reports.append({"preset": name, "video": a.size, "load_average": os.getloadavg(), **report})
            print(json.dumps(reports[-1], indent=2), flush=True)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(reports if len(reports) > 1 else reports[0], indent=2) + "\n")
    if a.markdown:
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text(markdown(reports) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
