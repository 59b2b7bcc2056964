"""The `cvkit` command line: parses, resolves presets, calls the library; no logic of its own."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import List, Optional

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

    cvkit upscale examples/ --preset bicubic_x4
    cvkit backbones --task detect
    cvkit presets show bicubic_x4
    cvkit doctor
""",
)
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
):
    _state["verbose"] = verbose


# -- information ---------------------------------------------------------------------------------

@app.command(rich_help_panel="Information")
def backbones(task: Optional[str] = typer.Option(None, "--task", "-t", help="Only backbones this task can use."),
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
                 task: Optional[str] = typer.Option(None, "--task", "-t", help="Only this task's presets.")):
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


# -- helpers -------------------------------------------------------------------------------------

def _print_table(header: list[str], rows: list[list]) -> None:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for j, r in enumerate(cells):
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            typer.echo("  ".join("-" * w for w in widths))


def _showwarning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: one line and exit 2 for usage errors, 1 for runtime errors; tracebacks only
    with --verbose."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args or "-v" in args
    if not verbose:
        warnings.showwarning = _showwarning
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
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # click's usage errors
            print(f"error: {e.format_message()}", file=sys.stderr)
            sys.exit(e.exit_code or 2)
        if verbose:
            raise
        print(f"error: {type(e).__name__}: {e} (run with --verbose for the traceback)", file=sys.stderr)
        sys.exit(1)


__all__ = ["app", "main", "UsageError"]
