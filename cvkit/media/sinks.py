"""Sinks: rendered images mirroring the input tree, H.264 video with the input's audio, and JSON
lines, all under one output folder that never overwrites inputs or earlier runs.

Every file is written under a temporary name (``.<name>.part``) and renamed into place when
complete, so an interrupted run never leaves a half-written file under a real name.
"""
from __future__ import annotations

import json
import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from ..errors import CvkitError, UsageError
from .frame import Frame, VideoInfo

log = logging.getLogger("cvkit.media")

#: audio codecs the MP4 muxer takes as they are; anything else is re-encoded to AAC
MP4_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"})


def _part(path: Path) -> Path:
    return path.with_name(f".{path.name}.part")


def _cannot_write(path: Path, e: OSError) -> CvkitError:
    return CvkitError(f"cannot write to {path}: {e.strerror or e}")


def next_run_dir(project: str | os.PathLike, name: str) -> Path:
    """Create and return ``project/name/exp``, or ``exp2``, ``exp3``, ... if taken."""
    base = Path(project) / name
    n = 1
    while True:
        path = base / ("exp" if n == 1 else f"exp{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1
        except OSError as e:
            raise _cannot_write(path, e) from None


def prepare_out_dir(out: str | os.PathLike | None, *, project: str | os.PathLike, name: str,
                    root: Path | None = None) -> Path:
    """The run's output folder: `out` if given (refused when it is the input folder `root`),
    else a fresh run folder under `project`. Checks that it is writable."""
    if out is None:
        path = next_run_dir(project, name)
    else:
        path = Path(out).expanduser()
        if root is not None and path.resolve() == root.resolve():
            raise UsageError(f"--out {path} is the input folder; outputs would overwrite inputs, choose another")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _cannot_write(path, e) from None
    probe = path / ".cvkit-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise _cannot_write(path, e) from None
    return path


def write_image(path: Path, rgb: np.ndarray) -> None:
    """Encode `rgb` by the extension of `path` and write it atomically."""
    ext = path.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise CvkitError(f"cannot encode {path.name} as {ext}")
    tmp = _part(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(buf.tobytes())
        os.replace(tmp, path)
    except OSError as e:
        raise _cannot_write(path, e) from None


class VideoWriter:
    """H.264 MP4 (libx264, yuv420p, even size, moov in front: plays in browsers).

    The encoder opens on the first frame, so the output size may differ from the input's (odd
    sizes are padded by one edge pixel). Frames keep the input timestamps (`pts` in
    `info.time_base`); the input's first audio stream is copied packet by packet (re-encoded to
    AAC if MP4 cannot hold its codec), interleaved as video is written and cut at the end of
    the last video frame.

    x264's `ultrafast` preset keeps encoding off the critical path (at 720p about 7 ms of CPU per
    frame against 30 ms for `veryfast`, measured here) at the cost of larger files at the same
    `crf`; pass `preset` for smaller ones.
    """

    def __init__(self, path: Path, info: VideoInfo, *, crf: int = 20, preset: str = "ultrafast"):
        self.path = path
        self.info = info
        self.options = {"crf": str(crf), "preset": preset}
        self.frames = 0
        self._out = self._video = None
        self._ain = self._audio = self._packets = self._pending = None
        self._resampler = None
        self._last_pts = None

    def _open(self, height: int, width: int) -> None:
        info = self.info
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._out = av.open(str(_part(self.path)), "w", format="mp4", options={"movflags": "+faststart"})
        except (OSError, av.FFmpegError) as e:
            raise _cannot_write(self.path, e) from None
        rate = info.rate or (Fraction(info.fps).limit_denominator(1001) if info.fps else Fraction(30))
        v = self._out.add_stream("libx264", rate=rate, options=self.options)
        v.width, v.height = width + width % 2, height + height % 2
        v.pix_fmt = "yuv420p"
        v.time_base = v.codec_context.time_base = info.time_base
        self._video = v
        if info.has_audio and info.path:
            self._open_audio()

    def _open_audio(self) -> None:
        try:
            self._ain = av.open(self.info.path)
            a_in = self._ain.streams.audio[0]
            if a_in.codec_context.name in MP4_AUDIO:
                self._audio = self._out.add_stream_from_template(a_in)
            else:
                n = a_in.layout.nb_channels  # an order-less layout ("1 channels") is not AAC's
                layout = {1: "mono", 2: "stereo"}.get(n, a_in.layout.name)
                self._audio = self._out.add_stream("aac", rate=a_in.rate)
                self._audio.layout = layout
                self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=a_in.rate)
            self._packets = self._ain.demux(a_in)
        except (av.FFmpegError, OSError, IndexError, ValueError) as e:
            log.warning("%s: audio not copied (%s)", self.path.name, e)
            self._audio = None

    def write(self, rgb: np.ndarray, pts: int | None) -> None:
        """Encode one RGB frame at `pts` (in the input time base; None: one frame after the last)."""
        h, w = rgb.shape[:2]
        if self._out is None:
            self._open(h, w)
        if (h % 2 or w % 2) and (h + h % 2, w + w % 2) == (self._video.height, self._video.width):
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        step = self._frame_step()
        if pts is None or (self._last_pts is not None and pts <= self._last_pts):
            pts = 0 if self._last_pts is None else self._last_pts + step
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = pts, self.info.time_base
        self._last_pts = pts
        try:
            self._out.mux(self._video.encode(frame))
            self.frames += 1
            if self._audio is not None:
                self._copy_audio(until=float((pts + step) * self.info.time_base))
        except (OSError, av.FFmpegError) as e:
            raise CvkitError(f"cannot write {self.path}: {e}") from None

    def _frame_step(self) -> int:
        rate = self.info.rate or Fraction(30)
        return max(1, round(1 / (rate * self.info.time_base)))

    def _copy_audio(self, until: float) -> None:
        """Mux input audio packets that start before `until` seconds."""
        while True:
            pkt = self._pending or next(self._packets, None)
            self._pending = None
            if pkt is None:
                self._packets = iter(())
                return
            if pkt.dts is None:
                continue
            if pkt.pts is not None and float(pkt.pts * pkt.time_base) >= until:
                self._pending = pkt
                return
            if self._resampler is None:
                pkt.stream = self._audio
                self._out.mux(pkt)
            else:
                for af in pkt.decode():
                    for rf in self._resampler.resample(af):
                        self._out.mux(self._audio.encode(rf))

    def close(self) -> Path | None:
        """Flush the encoders, finish the file and move it into place; the output path, or None
        if no frame was written."""
        if self._out is None:
            return None
        try:
            self._out.mux(self._video.encode(None))
            if self._resampler is not None:
                self._out.mux(self._audio.encode(None))
            self._out.close()
            os.replace(_part(self.path), self.path)
        except (OSError, av.FFmpegError) as e:
            raise CvkitError(f"cannot finish {self.path}: {e}") from None
        finally:
            if self._ain is not None:
                self._ain.close()
            self._out = None
        return self.path


class JsonLines:
    """One JSON record per line, flushed per record; renamed into place on close."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._file = open(_part(path), "w", encoding="utf-8")  # noqa: SIM115  (closed by close())
        except OSError as e:
            raise _cannot_write(path, e) from None

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, default=_jsonable, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> Path:
        self._file.close()
        os.replace(_part(self.path), self.path)
        return self.path


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "tolist"):  # torch tensors
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class Sink:
    """Everything one run writes into `out_dir`.

    Stills go to ``out_dir/<rel path>`` with `image_ext`; video, webcam and stream frames to
    ``out_dir/<rel path>.mp4`` (one writer at a time: a new source closes the previous video);
    records to ``out_dir/predictions.jsonl``. `inputs` are resolved input files never to be
    overwritten."""

    def __init__(self, out_dir: Path, *, image_ext: str = ".jpg", save_media: bool = True,
                 save_json: bool = True, inputs: frozenset[Path] = frozenset(), video_options: dict | None = None):
        self.out_dir = Path(out_dir)
        self.image_ext = image_ext if image_ext.startswith(".") else f".{image_ext}"
        self.save_media = save_media
        self.inputs = inputs
        self.video_options = video_options or {}
        self.written: list[Path] = []
        self._targets: set[Path] = set()
        self._video: VideoWriter | None = None
        self._video_source: str | None = None
        self._json = JsonLines(self.out_dir / "predictions.jsonl") if save_json else None

    @property
    def saves_json(self) -> bool:
        return self._json is not None

    def _target(self, rel: str, ext: str) -> Path:
        rel_path = Path(rel)
        target = self.out_dir / rel_path.with_suffix(ext)
        if target in self._targets:  # a.png and a.jpg in one folder both map to a<ext>
            target = self.out_dir / rel_path.with_name(f"{rel_path.stem}_{rel_path.suffix[1:]}{ext}")
        if target.resolve() in self.inputs:
            raise CvkitError(f"refusing to overwrite input {target}")
        self._targets.add(target)
        return target

    def write(self, frame: Frame, rendered: np.ndarray | None, record: dict | None) -> None:
        """Save one frame's rendered image (if `rendered` is given and media is saved) and record."""
        if self._json is not None and record is not None:
            self._json.write(record)
        if not self.save_media or rendered is None:
            return
        rel = frame.meta.get("rel") or Path(frame.source).name
        if frame.meta.get("kind", "image") == "image":
            path = self._target(rel, self.image_ext)
            write_image(path, rendered)
            self.written.append(path)
            return
        if frame.source != self._video_source:
            self._close_video()
            self._video = VideoWriter(self._target(rel, ".mp4"), frame.meta["video"], **self.video_options)
            self._video_source = frame.source
        self._video.write(rendered, frame.meta.get("pts"))

    def _close_video(self) -> None:
        if self._video is not None:
            video, self._video, self._video_source = self._video, None, None
            path = video.close()
            if path is not None:
                self.written.append(path)

    def close(self) -> None:
        """Finish the open video and the JSON lines file."""
        try:
            self._close_video()
        finally:
            if self._json is not None:
                self.written.append(self._json.close())
                self._json = None
