"""The `batchllm` command: a Typer app that registers each command from its own module.

Commands stay thin (parse options, call the library, render); errors become one line and an
exit code in cli/errors.py. Heavy imports (torch, transformers) happen inside the commands so
that `batchllm --help` and `--version` answer at once.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from batchllm_cli import __version__
from batchllm_cli.cli.bench import bench
from batchllm_cli.cli.models import models
from batchllm_cli.cli.plan import PLAN_EPILOG, plan
from batchllm_cli.cli.run import RUN_EPILOG, run

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
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """Offline batch LLM inference with global prefix sharing."""


app.command("run", epilog=RUN_EPILOG)(run)
app.command("plan", epilog=PLAN_EPILOG)(plan)
app.command("models")(models)
app.command("bench")(bench)


def main() -> None:
    """Console-script entry point (`batchllm`)."""
    app()
