"""The streaming predictor: one loop for every task and every source.

Three stages overlap: a decode thread reads the source, a preprocess thread groups frames of
equal size into batches and calls `Task.preprocess`, and the caller's thread runs
`Task.forward` and `Task.postprocess` and yields ``(frame, result)`` pairs. Queues are bounded
and nothing is kept after it is yielded, so memory stays flat on long videos. In live mode the
decode stage keeps only the newest frame, so latency never grows.

Inference uses every core, so the helper stages must not stall it: they run at a lower
scheduling priority (`yield_cores`), and their OpenCV and PyTorch ops run single-threaded, so a
resize or a normalisation in the preprocess thread does not start a second pool of threads on
the cores the model's threads are waiting for (a parallel op finishes only when its slowest
thread does; measured on 2 cores: 2x the pipeline fps of a 100-fps lane detector).
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
from collections.abc import Iterator
from typing import Any

import cv2
import torch

from ..errors import UsageError
from ..hardware import cpu_has_native_bf16
from ..media.frame import Frame
from ..media.sources import Source, open_source
from .task import Task

log = logging.getLogger("cvkit.engine")

_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _autocast(task: Task, bf16: bool):
    """A context-manager factory for the forward pass."""
    if not bf16:
        return contextlib.nullcontext
    param = next(task.model.parameters(), None)
    device = param.device.type if param is not None else "cpu"
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    if device == "cpu" and cpu_has_native_bf16():
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    log.warning("--bf16 ignored: this %s has no native bf16 (capability %s), where bf16 runs far slower "
                "than fp32; running in fp32", device.upper(), torch.backends.cpu.get_cpu_capability())
    return contextlib.nullcontext


def _to_fp32(raw: Any) -> Any:
    """bf16 tensors in a nested output -> fp32, so postprocess code (and numpy) can take them."""
    if isinstance(raw, torch.Tensor):
        return raw.float() if raw.dtype == torch.bfloat16 else raw
    if isinstance(raw, (list, tuple)):
        return type(raw)(_to_fp32(r) for r in raw)
    if isinstance(raw, dict):
        return {k: _to_fp32(v) for k, v in raw.items()}
    return raw


def yield_cores(nice: int = 10) -> None:
    """Lower the calling thread's scheduling priority by `nice` (Linux, where each thread has
    its own nice value and the threads it starts, such as codec threads, inherit it)."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))


def _one_torch_thread() -> None:
    """Run this thread's PyTorch ops on one thread. OpenMP keeps a thread count per thread, set
    from the global one at a thread's first parallel op; `torch.set_num_threads` sets the
    caller's and the global one, so the caller of `predict` restores the global count after."""
    torch.get_num_threads()  # this thread's first query fixes its count from the global one
    torch.set_num_threads(1)


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def _get(q: queue.Queue, stop: threading.Event):
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            pass
    return _END


def _decode(source: Source, frames: queue.Queue, stop: threading.Event, live: bool) -> None:
    yield_cores()
    it = iter(source)
    end: Any = _END
    try:
        for frame in it:
            if stop.is_set():
                break
            if not live:
                if not _put(frames, frame, stop):
                    break
                continue
            while True:  # keep only the newest frame
                try:
                    frames.put_nowait(frame)
                    break
                except queue.Full:
                    try:
                        frames.get_nowait()
                        source.dropped += 1
                    except queue.Empty:
                        pass
    except BaseException as e:  # noqa: BLE001  (handed to the consumer, which re-raises it)
        end = _Failure(e)
    finally:
        it.close()
    _put(frames, end, stop)


def _preprocess(task: Task, frames: queue.Queue, batches: queue.Queue, stop: threading.Event,
                size: int, live: bool, ready: threading.Event) -> None:
    yield_cores()
    _one_torch_thread()
    ready.set()
    pending = None
    try:
        with torch.inference_mode():
            while True:
                first = pending if pending is not None else _get(frames, stop)
                pending = None
                if not isinstance(first, Frame):
                    _put(batches, first, stop)
                    return
                group = [first]
                while len(group) < size:
                    if live:
                        try:
                            nxt = frames.get_nowait()
                        except queue.Empty:
                            break
                    else:
                        nxt = _get(frames, stop)
                    if not isinstance(nxt, Frame) or nxt.image.shape != first.image.shape:
                        pending = nxt
                        break
                    group.append(nxt)
                x, metas = task.preprocess(group)
                if not _put(batches, (group, x, metas), stop):
                    return
    except BaseException as e:  # noqa: BLE001  (re-raised by the consumer)
        _put(batches, _Failure(e), stop)


def predict(task: Task, source, *, batch: int = 1, vid_stride: int = 1, max_frames: int | None = None,
            bf16: bool = False, live: bool | None = None) -> Iterator[tuple[Frame, Any]]:
    """Run `task` on `source`, yielding ``(frame, result)`` in source order, one frame at a time.

    source: anything `open_source` takes, or an open Source (then `vid_stride` and `max_frames`
    are the Source's own). batch: frames per forward pass; only frames of equal size share a
    batch. bf16: autocast to bfloat16 where the hardware computes it natively, else a warning
    and fp32. live: keep only the newest decoded frame (default: the source's, on for webcams
    and streams); frames dropped so are counted in ``source.dropped``.

    Closing the generator (or breaking out of the loop) stops the decode and preprocess
    threads; an exception in any stage is raised here.
    """
    if batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    src = source if isinstance(source, Source) else open_source(source, vid_stride=vid_stride,
                                                                max_frames=max_frames, live=live)
    live = src.live if live is None else live
    autocast = _autocast(task, bf16)
    param = next(task.model.parameters(), None)
    device = param.device if param is not None else None

    stop, ready = threading.Event(), threading.Event()
    torch_threads = torch.get_num_threads()
    frames: queue.Queue = queue.Queue(maxsize=1 if live else max(4, 2 * batch))
    batches: queue.Queue = queue.Queue(maxsize=2)
    threads = [
        threading.Thread(target=_decode, args=(src, frames, stop, live), name="cvkit-decode", daemon=True),
        threading.Thread(target=_preprocess, args=(task, frames, batches, stop, batch, live, ready),
                         name="cvkit-preprocess", daemon=True),
    ]
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    for t in threads:
        t.start()
    ready.wait(timeout=10)
    torch.set_num_threads(torch_threads)  # the global count, which the preprocess thread changed
    try:
        while True:
            item = batches.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            group, x, metas = item
            if device is not None and isinstance(x, torch.Tensor) and x.device != device:
                x = x.to(device, non_blocking=True)
            with torch.inference_mode():
                with autocast():
                    raw = task.forward(x)
                results = task.postprocess(_to_fp32(raw), metas)
            del item, x, raw
            yield from zip(group, results)
            del group, results
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
        cv2.setNumThreads(cv_threads)
