"""The media pipeline end to end: sources, predictor, sinks and run(), with a tiny task.

Synthetic videos are made here with PyAV (64x48, 30 frames); stills come from Set5.
"""
from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch import nn

from cvkit.engine.predictor import predict
from cvkit.engine.run import run
from cvkit.engine.task import Task
from cvkit.errors import CvkitError, UsageError
from cvkit.media import FileSource, Frame, StreamSource, VideoSource, open_source

SET5 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sr" / "Set5"


class Invert(Task):
    """Inverts colours and upscales `scale`x (nearest); raises KeyboardInterrupt after
    `interrupt_after` frames; records the batch shapes it saw."""

    name = "invert"
    image_ext = ".png"

    def __init__(self, scale: int = 1, interrupt_after: int | None = None):
        super().__init__(nn.Identity())
        self.scale = scale
        self.interrupt_after = interrupt_after
        self.seen = 0
        self.batches: list[tuple] = []

    def preprocess(self, frames):
        x = torch.from_numpy(np.stack([f.image for f in frames])).permute(0, 3, 1, 2)
        return x, [{} for _ in frames]

    def forward(self, batch):
        if self.interrupt_after is not None and self.seen >= self.interrupt_after:
            raise KeyboardInterrupt
        self.seen += len(batch)
        self.batches.append(tuple(batch.shape))
        out = 255 - batch
        if self.scale > 1:
            out = out.repeat_interleave(self.scale, 2).repeat_interleave(self.scale, 3)
        return out

    def postprocess(self, raw, metas):
        return [np.ascontiguousarray(r.permute(1, 2, 0).numpy()) for r in raw]

    def render(self, frame, result):
        return result

    def serialise(self, result):
        return {"height": result.shape[0], "width": result.shape[1], "mean": float(result.mean())}


def make_video(path: Path, frames: int = 30, fps: int = 30, size=(64, 48), audio: str | bool = False,
               faststart: bool = False) -> Path:
    """A moving-gradient H.264 video, with a 440 Hz tone as long as the video if `audio` (True
    or "aac": AAC; "pcm_s16le": PCM, which MP4 cannot hold)."""
    w, h = size
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as c:
        v = c.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        a = None
        if audio:
            a = c.add_stream("aac" if audio is True else audio, rate=48000)
            a.layout = "mono"
        yy, xx = np.mgrid[0:h, 0:w]
        for i in range(frames):
            img = np.stack([(xx * 4 + i * 8) % 256, (yy * 5) % 256, np.full_like(xx, i * 8 % 256)], -1)
            c.mux(v.encode(av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")))
        c.mux(v.encode(None))
        if a is not None:
            n = 48000 * frames // fps
            t = np.arange(n) / 48000
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            pcm = audio == "pcm_s16le"
            if pcm:
                tone = (tone * 32767).astype(np.int16)
            for start in range(0, n, 1024):
                chunk = np.ascontiguousarray(tone[None, start:start + 1024])
                af = av.AudioFrame.from_ndarray(chunk, format="s16" if pcm else "fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = 48000, start, Fraction(1, 48000)
                c.mux(a.encode(af))
            c.mux(a.encode(None))
    return path


def probe(path: Path) -> dict:
    """Decode a video fully: frame count, size, frame timestamps, rate, duration, audio."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        times = [float(f.time) for f in c.decode(v)]
        return {"frames": len(times), "size": (v.width, v.height), "times": times, "rate": v.average_rate,
                "duration": c.duration / av.time_base if c.duration else None,
                "audio": len(c.streams.audio), "codec": v.codec_context.name, "pix_fmt": v.format.name}


@pytest.fixture
def mixed_folder(tmp_path):
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    (root / "b" / "c").mkdir(parents=True)
    shutil.copy(SET5 / "bird.png", root / "a" / "img10.png")
    shutil.copy(SET5 / "head.png", root / "a" / "img2.png")
    jpg = root / "b" / "c" / "butterfly.jpg"
    from PIL import Image

    Image.open(SET5 / "butterfly.png").convert("RGB").save(jpg, quality=90)
    (root / "b" / "empty.png").write_bytes(b"")
    data = jpg.read_bytes()
    (root / "b" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("not an image\n")
    return root


# -- sources ---------------------------------------------------------------------------------
def test_folder_skips_and_counts_corrupt_files_and_sorts_naturally(mixed_folder):
    src = open_source(mixed_folder)
    frames = list(src)
    assert [f.meta["rel"] for f in frames] == ["a/img2.png", "a/img10.png", "b/c/butterfly.jpg"]
    assert all(f.image.dtype == np.uint8 and f.image.flags.c_contiguous and f.image.shape[2] == 3 for f in frames)
    assert sorted(Path(p).name for p, _ in src.skipped) == ["empty.png", "notes.txt", "truncated.jpg"]


def test_glob_matches_recursively_under_its_root(mixed_folder):
    src = open_source(str(mixed_folder / "**" / "*.png"))
    assert [f.meta["rel"] for f in src] == ["a/img2.png", "a/img10.png"]
    assert [Path(p).name for p, _ in src.skipped] == ["empty.png"]


def test_txt_list_skips_missing_paths(mixed_folder, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("# inputs\nin/a/img2.png\n\nin/missing.png\n" + str(mixed_folder / "b" / "c" / "butterfly.jpg"))
    src = open_source(lst)
    assert [Path(f.source).name for f in src] == ["img2.png", "butterfly.jpg"]
    assert [(Path(p).name, r) for p, r in src.skipped] == [("missing.png", "not found")]


def test_nonexistent_path_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="source not found"):
        open_source(tmp_path / "nope.mp4")
    with pytest.raises(UsageError, match="no files match"):
        open_source(str(tmp_path / "*.jpg"))


def test_video_source_gives_timestamps_stride_and_max_frames(tmp_path):
    video = make_video(tmp_path / "v.mp4")
    frames = list(open_source(video))
    assert len(frames) == 30 and frames[0].image.shape == (48, 64, 3)
    assert [f.index for f in frames] == list(range(30))
    assert frames[3].timestamp == pytest.approx(0.1) and frames[0].meta["fps"] == pytest.approx(30)
    strided = list(open_source(video, vid_stride=3, max_frames=4))
    assert [f.index for f in strided] == [0, 3, 6, 9]
    assert strided[0].meta["fps"] == pytest.approx(10)


def test_truncated_mp4_keeps_decoded_frames(tmp_path):
    video = make_video(tmp_path / "v.mp4", faststart=True)
    data = video.read_bytes()
    video.write_bytes(data[: int(len(data) * 0.6)])
    src = open_source(video)
    frames = list(src)
    assert 5 <= len(frames) < 30
    assert not src.skipped


def test_stream_source_reconnects_after_the_stream_ends(tmp_path):
    video = make_video(tmp_path / "v.mp4", frames=10)
    src = StreamSource(str(video), reconnect=1, retry_delay=0.0, max_frames=25, live=False)
    frames = list(src)
    assert len(frames) == 25
    assert [f.index for f in frames[8:12]] == [8, 9, 10, 11]
    with pytest.raises(CvkitError, match="cannot read stream"):
        list(StreamSource(str(tmp_path / "absent.mp4"), reconnect=0, retry_delay=0.0))


def test_urls_and_webcam_indices_are_classified(tmp_path):
    assert isinstance(open_source("https://example.com/clips/a.mp4"), VideoSource)
    stream = open_source("rtsp://camera.local:554/live")
    assert isinstance(stream, StreamSource) and stream.live
    assert not open_source("rtsp://camera.local/live", live=False).live
    with pytest.raises(UsageError, match="unsupported URL scheme"):
        open_source("ftp://example.com/a.mp4")
    (tmp_path / "x.doc").touch()
    with pytest.raises(UsageError, match="unsupported file type"):
        open_source(tmp_path / "x.doc")


def test_missing_webcam_is_a_cvkit_error():
    with pytest.raises(CvkitError, match="cannot open webcam"):
        open_source("7")


# -- predictor -------------------------------------------------------------------------------
def test_predict_batches_only_equal_sizes_and_keeps_order(mixed_folder):
    task = Invert()
    pairs = list(predict(task, mixed_folder, batch=4))
    assert [f.meta["rel"] for f, _ in pairs] == ["a/img2.png", "a/img10.png", "b/c/butterfly.jpg"]
    assert all(b[0] == 1 for b in task.batches)  # Set5 images all differ in size
    for frame, result in pairs:
        np.testing.assert_array_equal(result, 255 - frame.image)


def test_predict_batches_video_frames(tmp_path):
    task = Invert()
    pairs = list(predict(task, make_video(tmp_path / "v.mp4"), batch=8))
    assert [f.index for f, _ in pairs] == list(range(30))
    assert [b[0] for b in task.batches] == [8, 8, 8, 6]


def test_breaking_out_of_predict_stops_its_threads(tmp_path):
    import threading

    for frame, _ in predict(Invert(), make_video(tmp_path / "v.mp4")):
        if frame.index == 3:
            break
    assert not [t for t in threading.enumerate() if t.name.startswith("cvkit-")]


def test_task_error_propagates_and_the_video_is_still_finished(tmp_path):
    class Broken(Invert):
        def postprocess(self, raw, metas):
            if self.seen > 5:
                raise RuntimeError("boom")
            return super().postprocess(raw, metas)

    with pytest.raises(RuntimeError, match="boom"):
        run(Broken(), make_video(tmp_path / "v.mp4"), out=tmp_path / "out", progress=False)
    assert probe(tmp_path / "out" / "v.mp4")["frames"] == 5


class ThreadCounts(Invert):
    """Records the PyTorch thread count its preprocess and forward run with."""

    def preprocess(self, frames):
        self.pre_threads = torch.get_num_threads()
        return super().preprocess(frames)

    def forward(self, batch):
        self.forward_threads = torch.get_num_threads()
        return super().forward(batch)


def test_preprocessing_runs_single_threaded_and_inference_keeps_every_thread(tmp_path):
    video = make_video(tmp_path / "clip.mp4", frames=4)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        task = ThreadCounts()
        assert len(list(predict(task, video))) == 4
        assert (task.pre_threads, task.forward_threads, torch.get_num_threads()) == (1, 2, 2)
    finally:
        torch.set_num_threads(before)


def test_live_mode_keeps_only_the_newest_frame(tmp_path):
    class Slow(Invert):
        def forward(self, batch):
            import time

            time.sleep(0.02)
            return super().forward(batch)

    src = open_source(make_video(tmp_path / "v.mp4", frames=30), live=True)
    indices = [f.index for f, _ in predict(Slow(), src)]
    assert indices == sorted(indices) and indices[-1] == 29
    assert src.dropped > 0 and len(indices) + src.dropped == 30


def test_bf16_without_native_support_warns_and_runs_fp32(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("cvkit.engine.predictor.cpu_has_native_bf16", lambda: False)

    class Probe(Invert):
        def forward(self, batch):
            self.dtype = (batch.float() @ torch.ones(batch.shape[-1], 1)).dtype
            return super().forward(batch)

    task = Probe()
    task.model = nn.Linear(1, 1)
    list(predict(task, SET5 / "bird.png", bf16=True))
    assert task.dtype == torch.float32
    assert "no native bf16" in caplog.text


def test_native_bf16_detection_reads_cpu_flags(monkeypatch):
    from cvkit import hardware
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert hardware.cpu_has_native_bf16()
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    assert not hardware.cpu_has_native_bf16()


# -- run and sinks ---------------------------------------------------------------------------
def test_run_mirrors_the_input_tree_and_counts_skipped(mixed_folder, tmp_path):
    summary = run(Invert(), mixed_folder, project=tmp_path / "runs", progress=False)
    out = tmp_path / "runs" / "invert" / "exp"
    assert summary.out_dir == out and summary.frames == 3 and len(summary.skipped) == 3
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "a/img10.png", "a/img2.png", "b/c/butterfly.png", "predictions.jsonl"]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["source"] for r in records] == ["a/img2.png", "a/img10.png", "b/c/butterfly.jpg"]
    assert "3 frames" in summary.line() and "3 skipped" in summary.line() and str(out) in summary.line()


def test_run_folders_are_numbered_and_never_reused(tmp_path):
    dirs = [run(Invert(), SET5 / "bird.png", project=tmp_path, progress=False).out_dir for _ in range(3)]
    assert [d.name for d in dirs] == ["exp", "exp2", "exp3"]
    assert all((d / "bird.png").is_file() for d in dirs)


def test_out_refuses_the_input_folder(mixed_folder):
    with pytest.raises(UsageError, match="input folder"):
        run(Invert(), mixed_folder, out=mixed_folder, progress=False)


def test_unwritable_output_folder_is_a_cvkit_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CvkitError, match="cannot write to"):
        run(Invert(), SET5 / "bird.png", out=blocker / "out", progress=False)


@pytest.mark.parametrize("audio", [True, False])
def test_video_output_keeps_frames_rate_timestamps_and_audio(tmp_path, audio):
    video = make_video(tmp_path / "clip.mp4", fps=25, audio=audio)
    summary = run(Invert(scale=2), video, out=tmp_path / "out", progress=False)
    out = tmp_path / "out" / "clip.mp4"
    assert summary.frames == 30 and out.is_file()
    assert not list((tmp_path / "out").glob(".*.part"))
    src, dst = probe(video), probe(out)
    assert (dst["codec"], dst["pix_fmt"], dst["size"]) == ("h264", "yuv420p", (128, 96))
    assert dst["frames"] == src["frames"] == 30 and dst["rate"] == src["rate"] == 25
    np.testing.assert_allclose(dst["times"], src["times"], atol=1e-3)
    assert dst["duration"] == pytest.approx(src["duration"], abs=0.05)
    assert dst["audio"] == src["audio"] == int(audio)
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 30 and json.loads(lines[0])["width"] == 128


def test_audio_mp4_cannot_hold_is_reencoded_to_aac(tmp_path):
    video = make_video(tmp_path / "clip.mkv", frames=15, audio="pcm_s16le")
    run(Invert(), video, out=tmp_path / "out", progress=False, save_json=False)
    with av.open(str(tmp_path / "out" / "clip.mp4")) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
        assert c.duration / av.time_base == pytest.approx(0.5, abs=0.05)


def test_odd_sized_video_is_padded_to_even(tmp_path):
    video = make_video(tmp_path / "odd.mkv", size=(64, 48), frames=5)
    task = Invert()
    task.postprocess = lambda raw, metas: [np.ascontiguousarray(r.permute(1, 2, 0).numpy()[:47, :63]) for r in raw]
    run(task, video, out=tmp_path / "out", progress=False, save_json=False)
    assert probe(tmp_path / "out" / "odd.mp4")["size"] == (64, 48)


def test_interrupted_video_run_leaves_a_playable_file(tmp_path):
    video = make_video(tmp_path / "clip.mp4", audio=True)
    summary = run(Invert(interrupt_after=10), video, out=tmp_path / "out", progress=False)
    assert summary.interrupted and summary.frames == 10 and summary.line().startswith("interrupted")
    info = probe(tmp_path / "out" / "clip.mp4")
    assert info["frames"] == 10 and info["audio"] == 1
    assert info["duration"] == pytest.approx(10 / 30, abs=0.05)
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(x)["index"] for x in lines] == list(range(10))


def test_folder_with_images_and_videos_writes_both(mixed_folder, tmp_path):
    make_video(mixed_folder / "b" / "clip.avi", frames=6)
    src = open_source(mixed_folder)
    assert isinstance(src, FileSource) and src.total == 5 + 6  # an estimate: broken files count until read
    summary = run(Invert(), src, out=tmp_path / "out", progress=False)
    assert summary.frames == 9
    assert probe(tmp_path / "out" / "b" / "clip.mp4")["frames"] == 6


def test_show_without_a_display_warns_and_still_saves(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    summary = run(Invert(), SET5 / "bird.png", out=tmp_path / "out", show=True, progress=False)
    assert "--show ignored" in caplog.text and (tmp_path / "out" / "bird.png").is_file()
    assert summary.frames == 1


class FakeWindow:
    """Stands in for OpenCV's HighGUI: records what `imshow` got; `waitKey` answers 'q' once
    `quit_after` frames were shown."""

    def __init__(self, monkeypatch, quit_after: int):
        import cvkit.engine.run as run_module

        self.shown: list[np.ndarray] = []
        self.closed = False
        self.quit_after = quit_after
        monkeypatch.setenv("DISPLAY", ":99")
        monkeypatch.setattr(run_module.cv2, "namedWindow", lambda *a: None)
        monkeypatch.setattr(run_module.cv2, "imshow", lambda name, bgr: self.shown.append(bgr.copy()))
        monkeypatch.setattr(run_module.cv2, "waitKey", self.wait_key)
        monkeypatch.setattr(run_module.cv2, "destroyWindow", lambda name: setattr(self, "closed", True))

    def wait_key(self, delay):
        return ord("q") if len(self.shown) >= self.quit_after else -1


def test_show_displays_rendered_frames_with_an_fps_overlay_and_q_ends_the_run(tmp_path, monkeypatch):
    window = FakeWindow(monkeypatch, quit_after=5)
    video = make_video(tmp_path / "clip.mp4", frames=30, size=(320, 240))
    summary = run(Invert(), video, out=tmp_path / "out", show=True, progress=False)
    assert len(window.shown) == 5 and window.closed
    assert summary.frames == 4 and not summary.interrupted  # the frame shown when q came is not saved
    assert probe(tmp_path / "out" / "clip.mp4")["frames"] == 4  # the video is finished and plays
    first = next(iter(open_source(video)))
    expected_bgr = (255 - first.image)[..., ::-1]
    shown = window.shown[0].astype(int)
    box = shown[8:20, 8:40]  # the FPS overlay: a black box with white text at (8, 8)
    assert (box == 0).all(-1).mean() > 0.5 and (box > 200).all(-1).any()
    assert (expected_bgr[8:20, 8:40] != 0).any(-1).all()  # ... where the frame itself has no black
    assert np.abs(shown[60:, 60:] - expected_bgr[60:, 60:]).max() <= 2  # elsewhere the rendered frame, BGR


def test_display_only_run_creates_no_run_folder(tmp_path):
    summary = run(Invert(), SET5 / "bird.png", project=tmp_path, save=False, save_json=False, progress=False)
    assert summary.out_dir is None and summary.frames == 1 and not any(tmp_path.iterdir())
    assert "nothing saved" in summary.line()


def test_same_stem_inputs_get_distinct_outputs(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(SET5 / "bird.png", root / "a.png")
    from PIL import Image

    Image.open(SET5 / "head.png").convert("RGB").save(root / "a.jpg")
    summary = run(Invert(), root, out=tmp_path / "out", progress=False, save_json=False)
    assert sorted(p.name for p in summary.outputs) == ["a.png", "a_png.png"]


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    img.save(tmp_path / "phone.jpg", exif=exif)
    frame = next(iter(open_source(tmp_path / "phone.jpg")))
    assert frame.image.shape == (40, 20, 3) and frame.meta["rotation"] == 270


def test_frame_rejects_non_rgb_uint8():
    with pytest.raises(ValueError):
        Frame(np.zeros((4, 4), np.uint8), "x")
    f = Frame(np.zeros((4, 6, 3), np.uint8)[:, ::2], "x")
    assert f.image.flags.c_contiguous and f.size == (4, 3)
