"""The `batchllm` command: a Typer app that registers each command from its own module.

Commands stay thin (parse options, call the library, render); errors become one line and an
exit code in cli/errors.py. Heavy imports (torch, transformers) happen inside the commands so
that `batchllm --help` and `--version` answer at once.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from batchllm_cli import __version__
from batchllm_cli.cli.bench import BENCH_EPILOG, bench
from batchllm_cli.cli.models import models
from batchllm_cli.cli.plan import PLAN_EPILOG, plan
from batchllm_cli.cli.run import RUN_EPILOG, run

class Command(TyperCommand):
    """A command whose --help reads as Unix help does: `INPUT` (not `{input}`) in the usage line
    and the arguments, flags without a `<bool>` value, and plain value names (INTEGER, TEXT,
    PATH) wherever an option does not name its own (`--max-tokens N`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                param.metavar = param.metavar or (param.name or "").upper()
                param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]  # the name says it
            elif isinstance(param, TyperOption) and param.metavar is None:
                param.metavar = "" if param.is_flag else _value_name(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in super().collect_usage_pieces(ctx)]


class Group(TyperGroup):
    """The `batchllm` group, with the same flag display as Command."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


def _value_name(param: TyperOption) -> str:
    try:
        shown = param.display_type(None)  # Typer's "<int range>", "<list[str]>", "<path>"
    except Exception:  # noqa: BLE001 - a type that needs the context (choices): Typer's own label
        return None  # type: ignore[return-value]
    words = shown.strip("<>").replace(" range", "")
    return {"int": "INTEGER", "float": "FLOAT", "path": "PATH"}.get(words, "TEXT")


app = typer.Typer(
    name="batchllm",
    help=(
        "Offline batch LLM inference with global prefix sharing.\n\n"
        "Give it a JSONL file of prompts; it finds the prefixes the prompts share, computes each "
        "one once, and writes every answer back as JSONL, resumable after a crash.\n\n"
        "Examples:\n\n"
        "  batchllm run sample_data/prompts.jsonl -o out.jsonl\n\n"
        "  batchllm plan sample_data/prompts.jsonl\n\n"
        "  batchllm models"
    ),
    no_args_is_help=True,
    add_completion=False,
    cls=Group,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"batchllm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", "-V", callback=_version, is_eager=True, metavar="", help="Print the version and exit."),
    ] = None,
) -> None:
    """Offline batch LLM inference with global prefix sharing."""


app.command("run", epilog=RUN_EPILOG, cls=Command)(run)
app.command("plan", epilog=PLAN_EPILOG, cls=Command)(plan)
app.command("models", cls=Command)(models)
app.command("bench", epilog=BENCH_EPILOG, cls=Command)(bench)


STOPPED_BY_SIGNAL = (130, 143)  # exit codes of SIGINT / SIGTERM stops (cli/errors.py)


def main() -> None:
    """Console-script entry point (`batchllm`)."""
    from batchllm_cli.cli.interrupts import quiet_exit_on_signals

    try:
        app()
    except SystemExit as exc:
        if exc.code in STOPPED_BY_SIGNAL and "ray" not in sys.modules:  # Ray stops its cluster at exit
            # Stopped by a signal: the output is whole and closed, spools and locks are gone.
            # Freeing a big job's objects would take seconds (1.4 s for 230k tokenized lines);
            # the user asked to stop, so end now.
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(exc.code)
        raise
    finally:
        quiet_exit_on_signals()  # a Ctrl-C while the interpreter shuts down: no traceback
