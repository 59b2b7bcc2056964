"""The Python API: build a task from a preset and stream predictions."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .engine.predictor import predict as _predict
from .engine.task import Task, build_task
from .presets import load_preset


def load_task(preset: str, *, weights: str | None = None, overrides: list[str] | None = None,
              task: str | None = None, **task_options) -> Task:
    """The Task a preset (name or YAML path) describes, with `--set`-style `overrides` applied
    and `weights` (path, URL or 'none') replacing the preset's own. Exported weights (.onnx,
    .torchscript: `cvkit export`) carry their own preset, which replaces `preset`; the task then
    runs the file (see cvkit.export)."""
    from .export import is_exported, load_exported_task

    if is_exported(weights) or is_exported(preset):
        return load_exported_task(weights if is_exported(weights) else preset, overrides=overrides, task=task,
                                  **task_options)
    p = load_preset(preset, overrides, task=task)
    if task_options:
        from .engine.task import get_task
        return get_task(p["task"]).from_preset(p, weights=weights, **task_options)
    return build_task(p, weights=weights)


def predict(source, preset: str | Task, *, weights: str | None = None, overrides: list[str] | None = None,
            batch: int = 1, vid_stride: int = 1, max_frames: int | None = None, bf16: bool = False,
            live: bool | None = None, **task_options) -> Iterator[tuple[Any, Any]]:
    """Yield (frame, result) for every frame of `source` (image, folder, glob, .txt list, video,
    webcam index or stream URL), frame by frame, with constant memory.

    >>> for frame, image in cvkit.predict("examples/", "bicubic_x4"):
    ...     print(frame.source, image.shape)
    """
    task = preset if isinstance(preset, Task) else load_task(preset, weights=weights, overrides=overrides,
                                                             **task_options)
    yield from _predict(task, source, batch=batch, vid_stride=vid_stride, max_frames=max_frames,
                        bf16=bf16, live=live)
