"""`cvkit upscale` (and, with the training engine, `cvkit train/eval upscale`)."""
from __future__ import annotations

from pathlib import Path

import typer

from cvkit.cli import (
    BATCH,
    BF16,
    JSON,
    MAXF,
    OUT,
    PROJECT,
    SAVE,
    SET,
    SHOW,
    SOURCE,
    STRIDE,
    WEIGHTS,
    run_task,
)


def upscale(source: str = SOURCE,
            preset: str = typer.Option("espcn_x3", "--preset", "-p", help="Preset name or YAML path."),
            scale: float | None = typer.Option(None, "--scale", "-s",
                                                  help="Check (or, for bicubic, set) the scale."),
            tile: int | None = typer.Option(None, "--tile", help="Tile size in input pixels (bounds memory)."),
            tile_overlap: int = typer.Option(16, "--tile-overlap", help="Context pixels around each tile."),
            weights: str | None = WEIGHTS, overrides: list[str] = SET, out: Path | None = OUT,
            project: Path = PROJECT, save: bool = SAVE, show: bool = SHOW, save_json: bool = JSON,
            batch: int = BATCH, vid_stride: int = STRIDE, max_frames: int | None = MAXF,
            bf16: bool = BF16):
    """Super-resolve images, folders and videos (PNG for stills, H.264 for videos).

    Examples:

        cvkit upscale examples/ --preset espcn_x3
        cvkit upscale photo.jpg --preset bicubic_x4 --tile 256
        cvkit upscale clip.mp4 --preset espcn_x3 --out upscaled/
    """
    run_task("upscale", source, preset, weights, overrides, out, project, save, show, save_json, batch,
             vid_stride, max_frames, bf16, scale=scale, tile=tile, tile_overlap=tile_overlap)


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command(rich_help_panel="Tasks")(upscale)
