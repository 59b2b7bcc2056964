"""The `cvkit` command line: parses, resolves presets, calls the library; no logic of its own."""
from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import typer

from . import __version__
from .errors import CvkitError, UsageError

app = typer.Typer(
    name="cvkit",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
    help="""cvkit: task heads on interchangeable backbones, run on images, folders, videos and streams.

**Examples**

    cvkit upscale examples/upscale/ --preset bicubic_x4
    cvkit backbones --task detect
    cvkit presets show bicubic_x4
    cvkit doctor
""",
)
train_app = typer.Typer(help="Train a task head on your data (`cvkit train upscale --data DIR`).",
                         no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate a model on a dataset (`cvkit eval upscale --data DIR`).",
                       no_args_is_help=True)
app.add_typer(train_app, name="train", rich_help_panel="Training and evaluation")
app.add_typer(eval_app, name="eval", rich_help_panel="Training and evaluation")
presets_app = typer.Typer(help="List presets, or show one (`cvkit presets show NAME`).",
                          invoke_without_command=True, no_args_is_help=False)
app.add_typer(presets_app, name="presets", rich_help_panel="Information")

_state = {"verbose": False}


def _version(value: bool):
    if value:
        typer.echo(f"cvkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks and debug output."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    threads: int | None = typer.Option(
        None, "--threads", min=1,
        help="Threads for inference and training (default: all cores). On small models, one core "
             "less than the machine has leaves a core to video decoding and encoding."),
):
    _state["verbose"] = verbose
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


# -- information ---------------------------------------------------------------------------------

@app.command(rich_help_panel="Information")
def backbones(task: str | None = typer.Option(None, "--task", "-t", help="Only backbones this task can use."),
              refresh: bool = typer.Option(False, help="Recount params and GFLOPs instead of using the cache.")):
    """Table of backbones: name, aliases, params, GFLOPs at 224x224, output channels and strides,
    known weights.

    Example: `cvkit backbones --task detect`
    """
    from .zoo import backbone_table

    rows = backbone_table(task=task, refresh=refresh)
    _print_table(["name", "aliases", "params(M)", "GFLOPs", "channels", "strides", "weights"], rows)


@presets_app.callback()
def presets_list(ctx: typer.Context,
                 task: str | None = typer.Option(None, "--task", "-t", help="Only this task's presets.")):
    """List presets (name, task, model, weights)."""
    if ctx.invoked_subcommand is not None:
        return
    from .presets import load_preset, preset_names, preset_weights

    rows = []
    for name in preset_names():
        p = load_preset(name)
        if task and p["task"] != task:
            continue
        loc, _ = preset_weights(p)
        model = p["model"] + (f" + {p['backbone']}" if p.get("backbone") else "")
        rows.append([name, p["task"], model, Path(loc).name if loc else "-", p.get("description") or ""])
    if task and not rows:
        from .engine.task import TASK_NAMES
        if task not in TASK_NAMES:
            from .registry import unknown_name_error
            raise unknown_name_error("task", task, TASK_NAMES)
    _print_table(["name", "task", "model", "weights", "description"], rows)


@presets_app.command("show")
def presets_show(name: str = typer.Argument(..., help="Preset name or path to a YAML file.")):
    """Print a preset's YAML (validated).

    Example: `cvkit presets show bicubic_x4`
    """
    from .presets import dump, load_preset

    typer.echo(dump(load_preset(name)), nl=False)


@app.command(rich_help_panel="Information")
def doctor():
    """Report the environment: torch, CPU features, OpenCV, PyAV codecs, extras, cache, webcams."""
    from .doctor import report

    for key, value in report():
        typer.echo(f"{key:<22} {value}")


# -- tasks ---------------------------------------------------------------------------------------

def run_task(task: str, source: str, preset: str, weights: str | None, overrides: list[str],
             out: Path | None, project: Path, save: bool, show: bool, save_json: bool, batch: int,
             vid_stride: int, max_frames: int | None, bf16: bool, **task_options) -> None:
    """Resolve the preset, build the task and stream `source` through it; print the summary.
    Task verbs (tasks/<task>/cli.py) call this with their own options as `task_options`."""
    from .api import load_task
    from .engine.run import run

    if batch < 1 or vid_stride < 1 or (max_frames is not None and max_frames < 1):
        raise UsageError("--batch, --vid-stride and --max-frames must be positive")
    t = load_task(preset, weights=weights, overrides=overrides, task=task, **task_options)
    summary = run(t, source, out=out, project=project, save=save, show=show, save_json=save_json,
                  batch=batch, vid_stride=vid_stride, max_frames=max_frames, bf16=bf16,
                  progress=sys.stderr.isatty())
    typer.echo(summary.line())
    if summary.interrupted:
        raise typer.Exit(130)


SOURCE = typer.Argument(..., help="Image, folder, glob, .txt list, video, webcam index (0) or stream URL.")
WEIGHTS = typer.Option(None, "--weights", "-w", help="Checkpoint path or URL; 'none' for random init.")
SET = typer.Option([], "--set", help="Override a preset key: --set args.scale=3 (repeatable).")
OUT = typer.Option(None, "--out", "-o", help="Output folder (default: runs/<task>/exp, exp2, ...).")
PROJECT = typer.Option(Path("runs"), "--project", help="Parent of the numbered run folders.")
SAVE = typer.Option(True, "--save/--no-save", help="Save rendered images and videos.")
SHOW = typer.Option(False, "--show", help="Open a preview window with an FPS overlay.")
JSON = typer.Option(True, "--json/--no-json", help="Write predictions.jsonl (one record per frame).")
BATCH = typer.Option(1, "--batch", "-b", help="Frames per forward pass.")
STRIDE = typer.Option(1, "--vid-stride", help="Keep every n-th video frame.")
MAXF = typer.Option(None, "--max-frames", help="Stop after this many frames.")
BF16 = typer.Option(False, "--bf16", help="bf16 autocast (only where the CPU has native bf16).")


# -- helpers -------------------------------------------------------------------------------------

def _print_table(header: list[str], rows: list[list]) -> None:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for j, r in enumerate(cells):
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            typer.echo("  ".join("-" * w for w in widths))


class _LevelFormatter(logging.Formatter):
    """`warning: message`, the same shape as the CLI's error lines."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        return msg if record.levelno == logging.INFO else f"{record.levelname.lower()}: {msg}"


def _showwarning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def _register_task_verbs() -> None:
    """Each task package that has a `cli` module adds its verbs (and train/eval commands)."""
    import importlib

    from .engine.task import TASK_NAMES

    for name in TASK_NAMES:
        try:
            module = importlib.import_module(f"cvkit.tasks.{name}.cli")
        except ModuleNotFoundError as e:
            if e.name not in (f"cvkit.tasks.{name}", f"cvkit.tasks.{name}.cli"):
                raise
            continue
        module.register(app, train_app, eval_app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line and exit 2 for usage errors, 1 for runtime errors; tracebacks only
    with --verbose."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args or "-v" in args
    if not verbose:
        warnings.showwarning = _showwarning
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelFormatter())
    logging.getLogger("cvkit").addHandler(handler)
    logging.getLogger("cvkit").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("cvkit").propagate = False
    try:
        app(args=args, prog_name="cvkit", standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except CvkitError as e:
        if verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Exception as e:
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # click's usage errors
            print(f"error: {e.format_message()}", file=sys.stderr)
            sys.exit(e.exit_code or 2)
        if verbose:
            raise
        print(f"error: {type(e).__name__}: {e} (run with --verbose for the traceback)", file=sys.stderr)
        sys.exit(1)


_register_task_verbs()
from .export_cli import register as _register_export

_register_export(app)

__all__ = ["app", "eval_app", "main", "run_task", "train_app"]
