"""`xraytodrr` command line. Each verb is a few lines in a `commands_*.py` module calling one engine function.

Bad input raises InputError: one line on stderr (and an `error` event in `--progress jsonl` mode), exit code 2.
SIGTERM becomes SystemExit so atomic writers clean their temporary files before the process ends.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
from enum import Enum
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand

from .errors import InputError
from .progress import JsonLinesProgress, Progress, make_progress

app = typer.Typer(name="xraytodrr", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Register X-rays to CT, render DRRs, and learn X-ray -> DRR translation.")


@app.callback()
def _root() -> None:
    # A callback keeps `xraytodrr VERB ...` a command group even while only one verb is registered (Typer would
    # otherwise run that verb directly and reject its name as an extra argument).
    pass


class ProgressMode(str, Enum):
    bar = "bar"
    jsonl = "jsonl"
    none = "none"


ProgressOption = Annotated[ProgressMode, typer.Option(
    "--progress", help="bar: progress bar on stderr; jsonl: JSON lines on stdout for a parent process; none")]


DeviceOption = Annotated[str, typer.Option(help="auto (CUDA when present, else CPU) | cpu | cuda | cuda:N")]


LabelsOption = Annotated[Optional[list[str]], typer.Option(
    "--labels", help="labels to use, comma-separated or repeated: --labels 1,2 or --labels 1 --labels 2 (default: all)")]


def parse_labels(values: list[str] | None) -> list[int] | None:
    """`--labels 1,2 --labels 5` -> [1, 2, 5]; None when not given (meaning all labels)."""
    if not values:
        return None
    try:
        return [int(v) for value in values for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--labels must be integers, got {' '.join(map(str, values))}", None,
                         "e.g. --labels 1,2") from None


class SpreadValuesCommand(TyperCommand):
    """A verb whose repeatable options also take the words after them: `--pose a.json b.json` (what the shell makes
    of `--pose poses/*.json`) means `--pose a.json --pose b.json`, `--labels 1 2` means `--labels 1 --labels 2`.
    Only in verbs without positional arguments, where such words could mean nothing else."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread_values(args, self.spread_options()))

    def spread_options(self) -> set[str]:
        # param_type_name / multiple: click's Parameter attributes (Typer ships its own copy of click's classes)
        if any(p.param_type_name == "argument" for p in self.params):
            return set()
        return {name for p in self.params if p.param_type_name == "option" and p.multiple for name in p.opts}


def spread_values(args: list[str], options: set[str]) -> list[str]:
    """Repeat the option before each extra word that follows its value, up to the next option (or `--`)."""
    out, option, value_next = [], None, False
    for arg in args:
        if arg == "--":
            option = None
        elif arg.startswith("-") and arg != "-":
            name = arg.split("=", 1)[0]
            option = name if name in options else None
            value_next = option is not None and "=" not in arg
        elif value_next:
            value_next = False
        elif option:
            out.append(option)
        out.append(arg)
    return out


def verb(name: str | None = None, description: str = "", group: typer.Typer | None = None):
    """Register a CLI verb. A function taking `progress: ProgressOption` receives a Progress object instead of
    the mode, and whatever it returns (output paths) is reported as the `done` event."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            mode = kwargs.get("progress", ProgressMode.none)
            mode = mode.value if isinstance(mode, ProgressMode) else str(mode)
            reporter = make_progress(mode, description or (name or fn.__name__))
            if "progress" in kwargs:
                kwargs["progress"] = reporter
            try:
                result = fn(*args, **kwargs)
            except InputError as e:
                _fail(reporter, str(e))
            finally:
                reporter.close()
            if isinstance(reporter, JsonLinesProgress):
                reporter.emit("done", outputs=_as_outputs(result))
            return result

        (group or app).command(name, cls=SpreadValuesCommand)(wrapper)
        return fn

    return decorate


def _fail(reporter: Progress, message: str):
    if isinstance(reporter, JsonLinesProgress):
        reporter.emit("error", message=message)
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(2)


def _as_outputs(result) -> list[str]:
    if result is None:
        return []
    if isinstance(result, (list, tuple)):
        return [str(r) for r in result]
    if isinstance(result, dict):
        return [str(v) for v in result.values()]
    return [str(result)]


def echo_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    _load_commands()
    app()


def _load_commands() -> None:
    """Import this Lib's command modules, then plug-in verbs (Registration/Translation Libs) declared under the
    `xraytodrr.commands` entry point group, so this Lib never imports them by name."""
    import importlib
    from importlib.metadata import entry_points

    for module in ("commands_render", "commands_prepare", "commands_xray", "commands_demo"):
        importlib.import_module(f"XrayToDRRLib.{module}")
    for entry in entry_points(group="xraytodrr.commands"):
        entry.load()
