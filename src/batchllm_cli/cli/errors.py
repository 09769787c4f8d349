"""Errors to messages and exit codes, in one place: every command runs inside `handled()`.

Exit codes:
  0  done, every line answered
  1  internal error (a bug: please report it)
  2  input error (missing or unreadable input, duplicate ids, bad lines under --strict);
     also the exit code of a command-line usage error
  3  output error (unwritable, or made from other input: --overwrite)
  4  model error    5  config error    6  plan error    7  KV capacity error
  8  done, but some input lines were bad: their error records are in the output
  130 / 143  stopped by SIGINT / SIGTERM: finished lines are kept, run again to resume
"""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from typing import Iterator

import typer
from rich.console import Console

from batchllm_cli.errors import BatchLLMError

EXIT_OK = 0
EXIT_BUG = 1
EXIT_LINES_FAILED = 8
EXIT_SIGINT = 130

DEBUG_ENV = "BATCHLLM_DEBUG"  # set to 1 to see the traceback of an internal error

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def error_line(message: str) -> None:
    """Prints `error: message` on stderr (markup off: messages quote user text)."""
    stderr.print(f"[bold red]error:[/] {_escape(message)}")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@contextmanager
def handled() -> Iterator[None]:
    """Turns any exception of a command into one message on stderr and an exit code."""
    try:
        yield
    except typer.Exit:
        raise
    except BatchLLMError as exc:
        error_line(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:  # Ctrl-C, or a stop signal raised as one (with its exit code)
        name = getattr(exc, "signal_name", None)
        error_line(f"stopped by {name}; run the same command again to resume" if name
                   else "interrupted; run the same command again to resume")
        raise typer.Exit(getattr(exc, "exit_code", EXIT_SIGINT)) from None
    except MemoryError:
        error_line("out of memory: lower --token-budget or run a smaller input")
        raise typer.Exit(EXIT_BUG) from None
    except Exception as exc:  # a traceback is a bug: say so, in one line unless debugging
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc(file=sys.stderr)
        error_line(
            f"internal error ({type(exc).__name__}: {exc}); this is a bug in batchllm, please "
            f"report it (set {DEBUG_ENV}=1 to see the traceback)"
        )
        raise typer.Exit(EXIT_BUG) from None
