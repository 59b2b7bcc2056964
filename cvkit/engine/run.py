"""`run`: the predictor plus sinks, progress bar, preview window and Ctrl-C handling.

Rendering, encoding and writing happen in a writer thread fed by a bounded queue, so they
overlap with inference. Ctrl-C (KeyboardInterrupt) stops reading, writes every result already
computed, finishes the video container and the JSON lines file (both play and parse), and
returns a summary with ``interrupted=True``.
"""
from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ..media.draw import put_label
from ..media.frame import Frame
from ..media.sinks import Sink, prepare_out_dir
from ..media.sources import Source, open_source
from .predictor import predict, yield_cores
from .task import Task

log = logging.getLogger("cvkit.engine")


@dataclass
class RunSummary:
    """What a run did. `line()` (also `str()`) is the one-line summary the CLI prints."""

    frames: int
    seconds: float
    out_dir: Path | None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dropped: int = 0
    outputs: list[Path] = field(default_factory=list)
    interrupted: bool = False

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        parts = [f"{self.frames} frames in {self.seconds:.1f} s ({self.fps:.1f} fps)",
                 f"{len(self.skipped)} skipped"]
        if self.dropped:
            parts.append(f"{self.dropped} dropped (live)")
        parts.append(f"outputs in {self.out_dir}" if self.out_dir is not None else "nothing saved")
        return ("interrupted: " if self.interrupted else "") + ", ".join(parts)

    __str__ = line


def display_available() -> bool:
    """Whether a window can open: a display on Linux, and an OpenCV build with GUI support."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow("cvkit", cv2.WINDOW_NORMAL)
    except cv2.error:
        return False
    return True


class _Preview:
    """The --show window: rendered frames with a smoothed FPS overlay; q or Esc closes it."""

    def __init__(self):
        self._last = None
        self._fps = 0.0

    def show(self, rgb: np.ndarray) -> bool:
        now = time.perf_counter()
        if self._last is not None:
            fps = 1.0 / max(now - self._last, 1e-6)
            self._fps = fps if self._fps == 0 else 0.9 * self._fps + 0.1 * fps
        self._last = now
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        put_label(bgr, f"{self._fps:.1f} FPS")
        cv2.imshow("cvkit", bgr)
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def close(self) -> None:
        cv2.destroyWindow("cvkit")


class _Writer:
    """A thread that renders, serialises and writes results through a Sink."""

    def __init__(self, task: Task, sink: Sink, *, render: bool, maxsize: int = 8):
        self.task, self.sink, self.render = task, sink, render
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="cvkit-write", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        yield_cores()  # the encoder's threads inherit this
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain without writing after a failure
            frame, result, rendered = item
            try:
                if rendered is None and self.render:
                    rendered = self.task.render(frame, result)
                record = None
                if self.sink.saves_json:
                    record = {"source": frame.meta.get("rel") or frame.source, "index": frame.index,
                              "timestamp": frame.timestamp, **self.task.serialise(result)}
                self.sink.write(frame, rendered, record)
            except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
                self._error = e

    def put(self, frame: Frame, result: Any, rendered: np.ndarray | None) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((frame, result, rendered))

    def close(self) -> None:
        """Write everything queued, then finish the files; raises the first write error."""
        self._queue.put(None)
        self._thread.join()
        try:
            self.sink.close()
        finally:
            if self._error is not None:
                raise self._error


def run(task: Task, source, *, out: str | os.PathLike | None = None, project: str | os.PathLike = "runs",
        save: bool = True, show: bool = False, save_json: bool = True, batch: int = 1, vid_stride: int = 1,
        max_frames: int | None = None, bf16: bool = False, progress: bool = True,
        live: bool | None = None) -> RunSummary:
    """Predict on `source` and save, show or both; returns a RunSummary.

    Outputs go to `out`, or to a fresh ``project/<task.name>/exp``, ``exp2``, ... (created only
    when something is saved). save: rendered images (``task.image_ext``) mirroring the input
    tree and H.264 MP4s for videos, webcams and streams. save_json: ``predictions.jsonl``, one
    record per frame. show: a preview window with an FPS overlay (warns and continues where no
    display exists; q or Esc ends the run). Other arguments as in `predict`.
    """
    src = source if isinstance(source, Source) else open_source(source, vid_stride=vid_stride,
                                                                max_frames=max_frames, live=live)
    preview = None
    if show:
        if display_available():
            preview = _Preview()
        else:
            log.warning("--show ignored: no display available (headless machine or OpenCV without GUI)")
    out_dir = None
    writer = None
    if save or save_json:
        out_dir = prepare_out_dir(out, project=project, name=task.name or "predict", root=src.root)
        sink = Sink(out_dir, image_ext=task.image_ext, save_media=save, save_json=save_json, inputs=src.inputs)
        writer = _Writer(task, sink, render=save)

    bar = tqdm(total=src.total, unit="frame", disable=not progress, dynamic_ncols=True, leave=True,
               desc=task.name or "predict")
    frames, interrupted, complete = 0, False, False
    start = time.perf_counter()
    results = predict(task, src, batch=batch, bf16=bf16, live=live)
    try:
        try:
            for frame, result in results:
                rendered = None
                if preview is not None:
                    rendered = task.render(frame, result)
                    if not preview.show(rendered):
                        break
                if writer is not None:
                    writer.put(frame, result, rendered if save else None)
                frames += 1
                bar.update()
            else:
                complete = True
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: finishing the outputs written so far")
        finally:
            results.close()
            if complete and bar.total is not None and bar.n < bar.total:
                bar.total = bar.n  # skipped files and early-ending videos: end at 100%
                bar.refresh()
            bar.close()
            if preview is not None:
                preview.close()
    except BaseException:
        if writer is not None:  # finish what was written, but report the first error
            try:
                writer.close()
            except Exception as e:  # noqa: BLE001
                log.warning("while finishing outputs after an error: %s", e)
        raise
    if writer is not None:
        writer.close()
    summary = RunSummary(frames=frames, seconds=time.perf_counter() - start, out_dir=out_dir,
                         skipped=list(src.skipped), dropped=src.dropped,
                         outputs=list(writer.sink.written) if writer is not None else [],
                         interrupted=interrupted)
    return summary
