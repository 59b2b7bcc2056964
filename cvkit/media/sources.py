"""Frame sources: one entry point, `open_source`, that classifies its argument.

Image file, folder (recursive, natural order), glob, ``.txt`` list of paths, video file (PyAV,
threaded decode), webcam index (OpenCV) and network stream (PyAV, reconnecting). Every source
yields `Frame`s; a corrupt or unsupported file is skipped with a warning and recorded in
`Source.skipped`, and a video that breaks mid-way ends cleanly after the frames it decoded.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlparse

import av
import cv2
import numpy as np
from PIL import Image, ImageOps

from ..errors import CvkitError, UsageError
from .frame import Frame, VideoInfo

log = logging.getLogger("cvkit.media")

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"})
STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt"})
_GLOB_CHARS = re.compile(r"[*?\[]")


def natural_key(text: str) -> list:
    """Sort key that orders ``img2`` before ``img10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


class Source:
    """An iterable of Frames with its bookkeeping.

    kind: "files", "video", "webcam" or "stream". live: whether a consumer should keep only the
    newest frame (webcams and streams by default). skipped: (item, reason) for every file that
    could not be read. dropped: frames a live consumer discarded. inputs: resolved input files,
    so that sinks can refuse to overwrite them. root: the folder outputs mirror.
    """

    kind = ""

    def __init__(self, *, vid_stride: int = 1, max_frames: int | None = None, live: bool = False):
        if vid_stride < 1:
            raise UsageError(f"--vid-stride must be >= 1, got {vid_stride}")
        if max_frames is not None and max_frames < 1:
            raise UsageError(f"--max-frames must be >= 1, got {max_frames}")
        self.vid_stride = vid_stride
        self.max_frames = max_frames
        self.live = live
        self.skipped: list[tuple[str, str]] = []
        self.dropped = 0
        self.inputs: frozenset[Path] = frozenset()
        self.root: Path | None = None

    def __iter__(self) -> Iterator[Frame]:
        frames = self._frames()
        try:
            for n, frame in enumerate(frames, 1):
                yield frame
                if self.max_frames is not None and n >= self.max_frames:
                    return
        finally:
            frames.close()

    def _frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    @property
    def total(self) -> int | None:
        """Frames this source will yield, when known in advance (else `max_frames` or None)."""
        return self.max_frames

    def skip(self, item, reason: str) -> None:
        """Record an unreadable item and warn."""
        self.skipped.append((str(item), reason))
        log.warning("skipped %s: %s", item, reason)

    # -- shared decoders ---------------------------------------------------------------------
    def _video_frames(self, url: str, rel: str, kind: str, options: dict | None = None,
                      first_index: int = 0, clock: float | None = None, fail=None) -> Iterator[Frame]:
        """Decode one video (file or stream) with PyAV. Errors before the first frame call
        `fail(url, reason)` (default: skip the item); errors after it end the video with a
        warning. `clock` (a monotonic start time) replaces the container timestamps with
        wall-clock ones, for streams."""
        fail = fail or self.skip
        try:
            container = av.open(url, options=options or {}, timeout=(15.0, 15.0))
        except (av.FFmpegError, OSError, ValueError) as e:
            fail(url, f"cannot open video ({_reason(e)})")
            return
        decoded = 0
        try:
            if not container.streams.video:
                fail(url, "no video stream")
                return
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            info = VideoInfo(
                path=url if kind == "video" else None,
                fps=fps / self.vid_stride if fps else None,
                rate=Fraction(rate) / self.vid_stride if rate else None,
                time_base=stream.time_base if clock is None else Fraction(1, 1000),
                frames=-(-stream.frames // self.vid_stride) if stream.frames else None,
                has_audio=kind == "video" and bool(container.streams.audio),
            )
            try:
                for vf in container.decode(stream):
                    decoded += 1
                    if (decoded - 1) % self.vid_stride:
                        continue
                    image = vf.to_ndarray(format="rgb24")
                    rotation = int(getattr(vf, "rotation", 0) or 0) % 360
                    if rotation:
                        image = np.ascontiguousarray(np.rot90(image, k=rotation // 90))
                    if clock is None:
                        pts = vf.pts if vf.pts is not None else round((decoded - 1) / (fps or 30) / stream.time_base)
                        ts = float(pts * stream.time_base)
                    else:
                        ts = time.monotonic() - clock
                        pts = round(ts * 1000)
                    yield Frame(image, url, first_index + decoded - 1, ts,
                                {"kind": kind, "rel": rel, "fps": info.fps, "rotation": rotation,
                                 "pts": pts, "video": info})
            except (av.FFmpegError, OSError, ValueError) as e:
                if decoded == 0:
                    fail(url, f"cannot decode video ({_reason(e)})")
                else:
                    log.warning("%s ended after %d frames: %s", url, decoded, _reason(e))
        finally:
            container.close()


def _reason(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode an image file to RGB uint8 with its EXIF orientation applied -> (image, rotation).
    Raises OSError or ValueError on a corrupt, truncated or empty file."""
    with Image.open(path) as im:
        im.load()
        orientation = im.getexif().get(0x0112, 1)
        im = ImageOps.exif_transpose(im)
        if im.mode != "RGB":
            im = im.convert("RGB")
        rotation = {3: 180, 6: 270, 8: 90}.get(orientation, 0)
        return np.array(im), rotation


def _video_frame_count(path: Path) -> int:
    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            if s.frames:
                return s.frames
            if c.duration and s.average_rate:
                return round(c.duration / av.time_base * float(s.average_rate))
    except (av.FFmpegError, OSError, IndexError, ValueError):
        pass
    return 0


class FileSource(Source):
    """Image and video files under a root folder, in the given order."""

    kind = "files"

    def __init__(self, paths: list[Path], root: Path, **kw):
        super().__init__(**kw)
        self.paths = paths
        self.root = root
        self.inputs = frozenset(p.resolve() for p in paths)
        self._resolved_root = root.resolve()
        self._total: int | None = None

    def _rel(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self._resolved_root).as_posix()
        except ValueError:
            return path.name

    @property
    def total(self) -> int:
        if self._total is None:
            n = 0
            for p in self.paths:
                ext = p.suffix.lower()
                if ext in IMAGE_EXTS:
                    n += 1
                elif ext in VIDEO_EXTS:
                    n += -(-_video_frame_count(p) // self.vid_stride)
                if self.max_frames is not None and n >= self.max_frames:
                    break
            self._total = n if self.max_frames is None else min(n, self.max_frames)
        return self._total

    def _frames(self) -> Iterator[Frame]:
        for item, path in enumerate(self.paths):
            ext = path.suffix.lower()
            if ext in VIDEO_EXTS:
                yield from self._video_frames(str(path), self._rel(path), "video")
            elif ext in IMAGE_EXTS:
                try:
                    image, rotation = read_image(path)
                except (OSError, ValueError, Image.DecompressionBombError) as e:
                    self.skip(path, f"cannot decode image ({_reason(e)})")
                    continue
                yield Frame(image, str(path), 0, None,
                            {"kind": "image", "rel": self._rel(path), "fps": None, "rotation": rotation,
                             "item": item})
            else:
                self.skip(path, f"unsupported file type '{ext or path.name}'")


class WebcamSource(Source):
    """A local camera through OpenCV; live by default. Timestamps are wall-clock seconds."""

    kind = "webcam"

    def __init__(self, index: int, **kw):
        kw.setdefault("live", True)
        super().__init__(**kw)
        self.index = index
        self._cap = cv2.VideoCapture(index)
        if not self._cap.isOpened():
            raise CvkitError(f"cannot open webcam {index}; check that a camera is connected")

    def _frames(self) -> Iterator[Frame]:
        fps = self._cap.get(cv2.CAP_PROP_FPS) or None
        info = VideoInfo(None, fps / self.vid_stride if fps else None, None, Fraction(1, 1000))
        start = time.monotonic()
        n = 0
        try:
            while True:
                ok, bgr = self._cap.read()
                if not ok:
                    log.warning("webcam %d stopped delivering frames", self.index)
                    return
                n += 1
                if (n - 1) % self.vid_stride:
                    continue
                ts = time.monotonic() - start
                yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), f"webcam:{self.index}", n - 1, ts,
                            {"kind": "webcam", "rel": f"webcam{self.index}", "fps": info.fps,
                             "rotation": 0, "pts": round(ts * 1000), "video": info})
        finally:
            self._cap.release()


class StreamSource(Source):
    """A network stream (RTSP, RTMP, HTTP, ...) decoded by PyAV, reconnecting when it drops.

    `reconnect` attempts in a row (waiting `retry_delay`, doubled each time, at most 30 s)
    before giving up; a delivered frame resets the count. Live by default; timestamps are
    wall-clock seconds since the first connection."""

    kind = "stream"

    def __init__(self, url: str, *, reconnect: int = 5, retry_delay: float = 1.0, **kw):
        kw.setdefault("live", True)
        super().__init__(**kw)
        self.url = url
        self.reconnect = reconnect
        self.retry_delay = retry_delay
        scheme = urlparse(url).scheme
        self.options = {"rtsp_transport": "tcp"} if scheme in ("rtsp", "rtsps") else {}

    def _frames(self) -> Iterator[Frame]:
        start = time.monotonic()
        index, failures, delivered = 0, 0, False
        errors: list[str] = []
        while True:
            got = 0
            for frame in self._video_frames(self.url, _stream_name(self.url), "stream", self.options,
                                            first_index=index, clock=start,
                                            fail=lambda url, reason: errors.append(reason)):
                got += 1
                yield frame
            if not delivered and not got:
                raise CvkitError(f"cannot read stream {self.url}: {errors[-1] if errors else 'no frames'}")
            delivered = True
            index += got * self.vid_stride
            failures = 0 if got else failures + 1
            if failures > self.reconnect:
                log.warning("giving up on %s after %d failed reconnects", self.url, self.reconnect)
                return
            delay = min(self.retry_delay * 2 ** max(failures - 1, 0), 30.0)
            log.warning("%s dropped; reconnecting in %.1f s", self.url, delay)
            time.sleep(delay)


class VideoSource(Source):
    """One video read by PyAV from a URL (e.g. an http(s) link to an .mp4)."""

    kind = "video"

    def __init__(self, url: str, **kw):
        super().__init__(**kw)
        self.url = url

    def _frames(self) -> Iterator[Frame]:
        return self._video_frames(self.url, _stream_name(self.url), "video")


def _stream_name(url: str) -> str:
    p = urlparse(url)
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{p.hostname or 'stream'}{p.path}").strip("_")
    return name or "stream"


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _GLOB_CHARS.search(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _walk(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [Path(dirpath, f) for f in filenames if not f.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.relative_to(folder).as_posix()))


def _read_list(txt: Path, skipped: list) -> list[Path]:
    paths = []
    for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        p = p if p.is_absolute() else txt.parent / p
        if p.is_dir():
            paths += _walk(p)
        elif p.is_file():
            paths.append(p)
        else:
            skipped.append((str(p), "not found"))
    return paths


def open_source(arg, *, vid_stride: int = 1, max_frames: int | None = None,
                live: bool | None = None) -> Source:
    """Classify `arg` and open the matching Source.

    `arg`: an int or digit string (webcam index), a URL (stream; an http(s) URL ending in a
    video extension is read as a video file), an image or video file, a folder (recursive), a
    ``.txt`` file listing paths (relative to the list's folder), or a glob pattern (``**``
    allowed). `vid_stride` keeps every n-th video frame, `max_frames` caps the frames of the
    whole source, `live` overrides the keep-only-the-newest-frame default (on for webcams and
    streams). Raises UsageError for a path that does not exist or a file type cvkit cannot read.
    """
    kw = {"vid_stride": vid_stride, "max_frames": max_frames}
    if live is not None:
        kw["live"] = live
    if isinstance(arg, int) or (isinstance(arg, str) and arg.strip().isdigit()):
        return WebcamSource(int(arg), **kw)
    text = os.fspath(arg)
    scheme = urlparse(text).scheme.lower() if "://" in text else ""
    if scheme in STREAM_SCHEMES:
        if scheme in ("http", "https") and Path(urlparse(text).path).suffix.lower() in VIDEO_EXTS:
            return VideoSource(text, **kw)
        return StreamSource(text, **kw)
    if scheme:
        raise UsageError(f"unsupported URL scheme '{scheme}://' (use one of {', '.join(sorted(STREAM_SCHEMES))})")
    path = Path(text).expanduser()
    if path.is_dir():
        return FileSource(_walk(path), path, **kw)
    if path.is_file():
        ext = path.suffix.lower()
        if ext == ".txt":
            skipped: list = []
            paths = _read_list(path, skipped)
            dirs = [str(p.resolve().parent) for p in paths]
            root = Path(os.path.commonpath(dirs)) if dirs else path.parent
            src = FileSource(paths, root, **kw)
            for item, reason in skipped:
                src.skip(item, reason)
            return src
        if ext in IMAGE_EXTS or ext in VIDEO_EXTS:
            return FileSource([path], path.parent, **kw)
        raise UsageError(f"unsupported file type '{ext or path.name}': {path} "
                         f"(images {' '.join(sorted(IMAGE_EXTS))}; videos {' '.join(sorted(VIDEO_EXTS))}; "
                         f"or a .txt list of paths)")
    if _GLOB_CHARS.search(text):
        matches = sorted((Path(m) for m in glob.glob(os.path.expanduser(text), recursive=True)),
                         key=lambda p: natural_key(p.as_posix()))
        files = [m for m in matches if m.is_file()]
        if not files:
            raise UsageError(f"no files match {text}")
        return FileSource(files, _glob_root(os.path.expanduser(text)), **kw)
    raise UsageError(f"source not found: {text} (expected an image, video, folder, glob, .txt list, "
                     f"webcam index or stream URL)")
