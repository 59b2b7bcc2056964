"""`cvkit export`: a task's model as an ONNX or TorchScript file that runs without the preset."""
from __future__ import annotations

from pathlib import Path

import typer

from .cli import SET, WEIGHTS
from .errors import UsageError

IMGSZ = typer.Option(None, "--imgsz", help="Frame size H W to trace (default: the preset's imgsz, else 256 256).")
EXPORT_OUT = typer.Option(None, "--out", "-o", help="Output file or folder (default: ./PRESET.onnx or ./PRESET.torchscript).")


def export(preset: str = typer.Option(..., "--preset", "-p", help="Preset name or YAML path."),
           backbone: str | None = typer.Option(None, "--backbone",
                                                  help="Replace the preset's backbone (same as --set backbone=B)."),
           weights: str | None = WEIGHTS,
           fmt: str = typer.Option("onnx", "--format", "-f", help="onnx or torchscript."),
           imgsz: tuple[int, int] | None = IMGSZ,
           dynamic: bool = typer.Option(False, "--dynamic", help="Free batch, height and width (checked at a second size)."),
           half: bool = typer.Option(False, "--half", help="fp16 (needs CUDA)."),
           nms: bool = typer.Option(False, "--nms", help="Detection: decoding and NMS in the graph, outputs num_dets, boxes, scores, labels (ONNX only)."),
           opset: int = typer.Option(17, "--opset", help="ONNX opset."),
           overrides: list[str] = SET,
           out: Path | None = EXPORT_OUT):
    """Export a task model (deploy mode: fused and re-parameterised) to ONNX or TorchScript; the
    file carries its task, preset, classes, input size and cvkit version, and every task verb runs
    it with `--weights FILE`. The export is verified against PyTorch before this returns.

    Examples:

        cvkit export --preset espcn_x3 --format onnx --dynamic
        cvkit upscale examples/ --weights espcn_x3.onnx
        cvkit export --preset retinanet_shapes --imgsz 128 128 --format torchscript --out models/
        cvkit detect video.mp4 --weights models/retinanet_shapes.torchscript
        cvkit export --preset retinanet_shapes --format onnx --nms --set args.conf=0.3 --out models/
    """
    from .export import export as run_export

    fmt = fmt.lower()
    if backbone:
        from .presets import load_preset

        if not load_preset(preset, overrides).get("backbone"):
            raise UsageError(f"--backbone: preset '{preset}' has no backbone to replace")
        overrides = [*overrides, f"backbone={backbone}"]
    report = run_export(preset, fmt, out, weights=weights, overrides=overrides, imgsz=imgsz, dynamic=dynamic,
                        half=half, opset=opset, nms=nms)
    typer.echo(report.line())


def register(app: typer.Typer) -> None:
    """Add `cvkit export` to `app` (once)."""
    if any((c.name or c.callback.__name__) == "export" for c in app.registered_commands):
        return
    app.command(rich_help_panel="Deployment")(export)
