"""The Task contract: everything task-specific the predictor, sinks, trainer and CLI need.

A task package in `tasks/` subclasses Task and registers it in TASKS. The engine and media code
call only these methods, so they never know which task runs.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..registry import Registry

TASKS = Registry("task")
"""name -> Task subclass."""


class Task:
    """One task bound to one model.

    Results are plain per-frame objects (see DESIGN.md: detection boxes, label maps, images...).
    """

    name: str = ""
    #: file extension of the rendered still images (upscale writes PNG, others JPEG by default)
    image_ext: str = ".jpg"

    def __init__(self, model: nn.Module, preset: dict | None = None):
        self.model = model.eval()
        self.preset = dict(preset or {})

    @classmethod
    def from_preset(cls, preset: dict, weights: str | None = None) -> Task:
        """Build the model a validated preset describes and load `weights` (a path, URL or
        'none'; None means the preset's own weights)."""
        raise NotImplementedError

    # -- inference --------------------------------------------------------------------------
    def preprocess(self, frames: Sequence[Frame]) -> tuple[torch.Tensor, list[dict]]:  # noqa: F821
        """Frames -> (batch tensor, per-frame meta for undoing the resize). Frames of one batch
        may differ in size; a task that cannot batch them returns a batch of one per call of
        `forward` by splitting in `preprocess` (the predictor batches only equal sizes)."""
        raise NotImplementedError

    def forward(self, batch: torch.Tensor) -> Any:
        """Raw model outputs for a batch."""
        return self.model(batch)

    def postprocess(self, raw: Any, metas: list[dict]) -> list[Any]:
        """Raw outputs -> one result per frame, in original-image pixels."""
        raise NotImplementedError

    # -- output ------------------------------------------------------------------------------
    def render(self, frame: Frame, result: Any) -> np.ndarray:  # noqa: F821
        """Frame + result -> RGB uint8 image to save or show."""
        raise NotImplementedError

    def serialise(self, result: Any) -> dict:
        """Result -> JSON-able dict (one JSON line per frame)."""
        raise NotImplementedError


TASK_NAMES = ("detect", "segment", "panoptic", "upscale", "depth", "lanes")


def get_task(name: str) -> type[Task]:
    """The Task class registered for `name`, importing its package (cvkit.tasks.<name>) lazily."""
    import importlib

    if name in TASK_NAMES and name not in TASKS:
        try:
            importlib.import_module(f"cvkit.tasks.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"cvkit.tasks.{name}":
                raise
    return TASKS.get(name)


def build_task(preset: dict, weights: str | None = None) -> Task:
    """The Task for a validated preset, with its model built and weights loaded."""
    return get_task(preset["task"]).from_preset(preset, weights=weights)
