"""`batchllm plan`: the prefix groups of a job, before any model work, and the plan file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from rich.console import Console

from batchllm_cli.cli.errors import handled
from batchllm_cli.cli.threads import THREADS_HELP

MAX_TOKENS = 256  # run's default --max-tokens too

PLAN_EPILOG = """\
Examples:

  batchllm plan sample_data/prompts.jsonl

  batchllm plan prompts.jsonl --json plan.json   (then: batchllm run prompts.jsonl -o out.jsonl --plan plan.json)

  batchllm plan prompts.jsonl --format json | jq .saving_ratio

Use the same --model, --max-tokens, --samples and --no-prefix-sharing as the run the plan is
for: with --json, the command to run the plan is printed with them.
"""


def plan(
    input: Annotated[Path, typer.Argument(metavar="INPUT", help="JSONL file, as for `batchllm run` (- reads standard input).", show_default=False)],
    model: Annotated[Optional[str], typer.Option("--model", "-m", metavar="NAME|PATH", help="Preset, .gguf file or model directory (its tokenizer and context). Default: the embedded SmolLM2-135M.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", metavar="FILE", help="Write the full plan here, for `batchllm run --plan`.")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, metavar="N", help="Default max_tokens of the run (orders groups, sizes KV).")] = MAX_TOKENS,
    no_prefix_sharing: Annotated[bool, typer.Option("--no-prefix-sharing", help="Plan every prompt alone (the baseline).")] = False,
    n: Annotated[int, typer.Option("--samples", "-n", min=1, max=128, metavar="N", help="Samples of each line that has no n of its own, as for the run.")] = 1,
    device: Annotated[Optional[str], typer.Option(metavar="DEVICE", help="Device whose KV pool the memory estimate uses (of a list, the first); default: cuda when present.")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, metavar="N", help=THREADS_HELP, show_default=False)] = None,
    top: Annotated[int, typer.Option(min=0, metavar="N", help="How many of the biggest groups to show.")] = 10,
    format: Annotated[Literal["table", "json"], typer.Option("--format", metavar="table|json", help="table (for people) or json (the report on stdout, for scripts).")] = "table",
) -> None:
    """Show how the prompts of INPUT share prefixes and what that saves, without running a model.

    The report: requests and groups, the sharing-degree histogram, prefix and distinct-part
    lengths, prefill tokens with and without sharing, what an LRU prefix cache of the same size
    would save in file order, the biggest groups with a preview of their prefix, and peak KV use.
    """
    console = Console()
    with handled():
        from batchllm_cli.cli.stdio import input_file

        if json_out is not None:
            _check_plan_path(json_out, input)
        with input_file(input) as (in_path, in_name):
            report = make_plan(in_path, model, max_tokens, not no_prefix_sharing, device, n, threads)
        if json_out is not None:
            _write_plan(json_out, report.plan.to_json())
        if format == "json":
            import orjson

            typer.echo(orjson.dumps(report_dict(report, top), option=orjson.OPT_INDENT_2).decode())
            return
        if report.plan.stats.num_requests == 0:
            what = f"only bad lines ({report.bad_lines})" if report.bad_lines else "no input lines"
            Console(stderr=True).print(f"[yellow]warning:[/] {in_name} has {what}: nothing to plan", highlight=False)
            return
        from batchllm_cli.cli.render import plan_report

        console.print(plan_report(report, top))
        if json_out is not None:
            command = run_command(input, json_out, model, max_tokens, no_prefix_sharing, n)
            console.print(f"plan written to {json_out}; run it with `{command}`", highlight=False, markup=False, soft_wrap=True)


class PlanReport:
    """A plan with what the report shows beside it (prefix previews, input facts)."""

    def __init__(self, plan: Any, requests: list, bad_lines: int, tokenizer: Any, model_name: str) -> None:
        self.plan = plan
        self.requests = requests
        self.bad_lines = bad_lines
        self.tokenizer = tokenizer
        self.model_name = model_name

    def prefix_preview(self, position: int, chars: int = 80) -> str:
        """The start of a group's shared prefix as text, on one line."""
        g = self.plan.groups[position]
        ids = self.requests[g.members[0]].prompt_ids[: g.prefix_len]
        text = " ".join(self.tokenizer.decode(ids.tolist()).split())
        return text if len(text) <= chars else text[: chars - 1] + "…"


def run_command(
    input: Path, plan_file: Path, model: str | None, max_tokens: int, no_prefix_sharing: bool, samples: int
) -> str:
    """The `batchllm run` command that runs a plan made with these options: it repeats every
    option the plan depends on (the rest of run's options are free)."""
    import shlex

    words = ["batchllm", "run", str(input), "-o", "OUT", "--plan", str(plan_file)]
    if model is not None:
        words += ["--model", model]
    if max_tokens != MAX_TOKENS:
        words += ["--max-tokens", str(max_tokens)]
    if samples != 1:
        words += ["--samples", str(samples)]
    if no_prefix_sharing:
        words.append("--no-prefix-sharing")
    return shlex.join(words)


def make_plan(
    input: Path, model: str | None, max_tokens: int, sharing: bool, device: str | None, default_n: int = 1,
    threads: int | None = None,
) -> PlanReport:
    """Reads and tokenizes INPUT exactly as `batchllm run` does, and plans it."""
    from batchllm_cli.cli.backend import tokenize_records, tokenizing_progress
    from batchllm_cli.cli.threads import set_threads
    from batchllm_cli.engine.config import load_engine_config
    from batchllm_cli.engine.runner import kv_pool_blocks
    from batchllm_cli.engine.tokenizer import Tokenizer
    from batchllm_cli.io.reader import BadLine, read_input
    from batchllm_cli.models.loader import resolve_model
    from batchllm_cli.planner import PlanSettings, build_plan
    from batchllm_cli.types import SamplingParams

    if device and "," in device:  # run's data-parallel list: the first device sizes the estimate
        from batchllm_cli.engine.parallel import parse_devices

        device = parse_devices(device)[0]
    config = load_engine_config(device, prefix_sharing=sharing)
    set_threads(threads, config)  # the tokenizer's threads
    source = resolve_model(model)
    tokenizer = Tokenizer.load(source.tokenizer_dir, source.tokenizer_gguf_file)
    bad = 0

    def good_records() -> Any:
        nonlocal bad
        for rec in read_input(input):
            if isinstance(rec, BadLine):
                bad += 1
            else:
                yield rec, False

    defaults = SamplingParams(max_tokens=max_tokens)
    progress = tokenizing_progress(lambda text: Console(stderr=True).print(text, highlight=False))
    tok = tokenize_records(good_records(), tokenizer, source.config.max_position, defaults, config.seed,
                           keep_done=True, on_batch=progress, default_n=default_n)
    settings = PlanSettings.from_engine(config, kv_pool_blocks(config, source.config))
    built = build_plan(tok.requests, settings)
    return PlanReport(built, tok.requests, bad + len(tok.rejected), tokenizer, source.name)


def report_dict(report: PlanReport, top: int) -> dict[str, Any]:
    """The report as JSON-ready data (the plan's stats plus previews)."""
    stats = report.plan.stats.to_dict()
    stats["top_groups"] = [
        {**g, "prefix_preview": report.prefix_preview(g["position"])} for g in stats["top_groups"][:top]
    ]
    return {"model": report.model_name, "bad_lines": report.bad_lines, "fingerprint": report.plan.fingerprint, **stats}


def _check_plan_path(path: Path, input: Path) -> None:
    """OutputError when --json would overwrite the input (before anything is read)."""
    import os

    from batchllm_cli.errors import OutputError

    try:
        same = path.exists() and input.exists() and os.path.samefile(path, input)
    except OSError:
        same = False
    if same:
        raise OutputError(f"--json {path} is the input file: choose another path for the plan")


def _write_plan(path: Path, data: bytes) -> None:
    from batchllm_cli.errors import OutputError

    try:
        path.write_bytes(data)
    except OSError as exc:
        raise OutputError(f"cannot write the plan to {path}: {exc.strerror or exc}") from None
