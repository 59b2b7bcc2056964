"""The Frame every source yields and every task consumes (DESIGN.md, Frame contract)."""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np


@dataclass(frozen=True)
class VideoInfo:
    """What a video sink needs to know about the video a frame came from; one object per source,
    shared by all its frames. `path` is the file to take the audio from (None for cameras and
    streams), `rate` the exact frame rate (after --vid-stride), `time_base` the unit of
    `Frame.meta["pts"]`, `frames` the expected frame count when known."""

    path: str | None
    fps: float | None
    rate: Fraction | None
    time_base: Fraction
    frames: int | None = None
    has_audio: bool = False


@dataclass
class Frame:
    """One RGB image with where it came from.

    image: HxWx3 RGB uint8, C-contiguous. source: file path, URL or ``webcam:N``. index: frame
    number within its source (0 for stills). timestamp: seconds from the start of the source, None
    for stills. meta: ``kind`` ("image", "video", "webcam" or "stream"), ``rel`` (path relative to
    the input root, used to mirror the input tree), ``fps``, ``rotation`` (degrees counter-clockwise
    already applied to ``image``), for stills ``item`` (position in the file list), and for video
    frames ``pts`` (in ``video.time_base``) and ``video`` (VideoInfo).
    """

    image: np.ndarray
    source: str
    index: int = 0
    timestamp: float | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        img = self.image
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"Frame.image must be HxWx3 uint8, got {img.dtype} {img.shape}")
        if not img.flags.c_contiguous:
            self.image = np.ascontiguousarray(img)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.image.shape[0], self.image.shape[1]
