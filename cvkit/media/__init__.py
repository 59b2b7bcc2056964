"""Media: frame sources, output sinks and drawing helpers; nothing task-specific."""
from .frame import Frame, VideoInfo
from .sinks import JsonLines, Sink, VideoWriter, next_run_dir, prepare_out_dir, write_image
from .sources import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    FileSource,
    Source,
    StreamSource,
    VideoSource,
    WebcamSource,
    open_source,
    read_image,
)

__all__ = [
    "IMAGE_EXTS", "VIDEO_EXTS", "FileSource", "Frame", "JsonLines", "Sink", "Source", "StreamSource", "VideoInfo",
    "VideoSource", "VideoWriter", "WebcamSource", "next_run_dir", "open_source", "prepare_out_dir", "read_image",
    "write_image",
]
