"""`cvkit doctor`: what this machine offers cvkit, one line per fact."""
from __future__ import annotations

import glob
import importlib.metadata as md
import importlib.util
import os
import platform

from .hardware import cpu_flags, cpu_has_native_bf16
from .weights import cache_dir


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _codecs() -> str:
    import av

    def has(name: str, mode: str) -> bool:
        try:
            av.codec.Codec(name, mode)
            return True
        except Exception:  # noqa: BLE001 - PyAV raises several types for a missing codec
            return False

    enc = [n for n in ("libx264", "h264", "libopenh264", "libvpx-vp9", "mpeg4", "aac") if has(n, "w")]
    dec = [n for n in ("h264", "hevc", "vp9", "av1", "mpeg4") if has(n, "r")]
    h264 = "yes" if {"libx264", "libopenh264", "h264"} & set(enc) else "NO"
    return f"H.264 encode: {h264}; encoders: {', '.join(enc)}; decoders: {', '.join(dec)}"


def report() -> list[tuple[str, str]]:
    """(label, value) pairs: versions, CPU features, codecs, extras, cache dir, webcams."""
    import torch

    rows = [("cvkit", __import__("cvkit").__version__),
            ("python", platform.python_version() + f" ({platform.machine()})"),
            ("torch", f"{torch.__version__} (CUDA available: {torch.cuda.is_available()})"),
            ("threads", f"{torch.get_num_threads()} intra-op, {os.cpu_count()} CPUs")]
    flags = cpu_flags()
    cap = torch.backends.cpu.get_cpu_capability()
    native_bf16 = cpu_has_native_bf16()
    feats = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni") if f in flags)
    rows.append(("cpu", f"{cap}; flags: {feats or 'unknown'}"))
    rows.append(("bf16", "native (--bf16 is fast)" if native_bf16
                 else "emulated: --bf16 would be much slower than fp32 here"))
    try:
        import cv2
        rows.append(("opencv", f"{cv2.__version__} (video I/O: "
                     + ", ".join(b for b in ("FFMPEG", "V4L2", "GStreamer") if f"{b}:" in cv2.getBuildInformation()
                                 and "YES" in cv2.getBuildInformation().split(f"{b}:", 1)[1].split("\n", 1)[0])
                     + ")"))
    except Exception as e:  # noqa: BLE001
        rows.append(("opencv", f"NOT importable ({e})"))
    try:
        import av
        rows.append(("pyav", f"{av.__version__}; {_codecs()}"))
    except Exception as e:  # noqa: BLE001
        rows.append(("pyav", f"NOT importable ({e})"))
    rows.append(("mmengine", _version("mmengine") or "missing (training needs it)"))
    for extra, dists in (("openmmlab", ("mmcv", "mmdet", "mmsegmentation")), ("onnx", ("onnx", "onnxruntime")),
                         ("optional", ("timm", "torchvision"))):
        found = [f"{d} {_version(d)}" for d in dists if _version(d)]
        missing = [d for d in dists if not _version(d)]
        rows.append((f"extra: {extra}", "; ".join(found + [f"{d} absent" for d in missing])))
    home = cache_dir()
    rows.append(("cache dir", f"{home} ({'exists' if home.exists() else 'not created yet'}; set CVKIT_HOME to move)"))
    cams = sorted(glob.glob("/dev/video*"))
    rows.append(("webcams", ", ".join(cams) if cams else "none found"))
    display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    rows.append(("display", "yes (--show works)" if display else "none (--show is unavailable)"))
    rows.append(("cuda kernels", "torchvision ops available" if importlib.util.find_spec("torchvision")
                 else "pure-PyTorch NMS / deform conv"))
    return rows
