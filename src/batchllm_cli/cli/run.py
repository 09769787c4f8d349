"""`batchllm run`: answer every prompt of a JSONL file into an output JSONL file, resumably."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from batchllm_cli.cli.errors import EXIT_LINES_FAILED, handled
from batchllm_cli.cli.interrupts import RunningWatch, StopSignals
from batchllm_cli.cli.plan import MAX_TOKENS
from batchllm_cli.cli.threads import THREADS_HELP

RUN_EPILOG = """\
Examples:

  batchllm run sample_data/prompts.jsonl -o out.jsonl

  batchllm run prompts.jsonl -o out.jsonl --max-tokens 64 --temperature 0.7 --seed 1

  batchllm run labels.jsonl -o scores.jsonl --max-tokens 1 --logprobs 5     # classify by next-token logprobs

  batchllm run tasks.jsonl -o samples.jsonl -n 8 --temperature 1.0 --seed 3  # 8 samples of each prompt, computed once

  batchllm plan prompts.jsonl --json plan.json && batchllm run prompts.jsonl -o out.jsonl --plan plan.json

  jq -c '{id, prompt: .question}' data.jsonl | batchllm run - -o - -q | jq -r .text

Run the same command again after a crash or Ctrl-C: finished lines are kept and skipped.
Ctrl-C stops after the current engine step (a second Ctrl-C at once).

Exit codes: 0 every line answered; 1 a bug (BATCHLLM_DEBUG=1 shows the traceback); 2 input
error (missing file, duplicate ids, bad lines under --strict) or a wrong option; 3 output
refused or unwritable; 4 model error; 5 config error; 6 plan error (--plan of another job);
7 KV capacity error; 8 done, but some lines were bad (their error records are in the output);
130 / 143 interrupted by SIGINT / SIGTERM (run again to resume).
"""


def run(
    input: Annotated[Path, typer.Argument(metavar="INPUT", help="JSONL file: one prompt, chat or OpenAI batch line per line; - reads standard input.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="OUTPUT", help="Where to write one JSON result per input line; - writes them to standard output (no resume).", show_default=False)],
    model: Annotated[Optional[str], typer.Option("--model", "-m", metavar="NAME|PATH", help="Preset name (see `batchllm models`), .gguf file or model directory. Default: the embedded SmolLM2-135M.")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, metavar="N", help="Most new tokens per request (a line's max_tokens wins).")] = MAX_TOKENS,
    min_tokens: Annotated[int, typer.Option(min=0, metavar="N", help="No EOS and no stop string before this many new tokens (a line's min_tokens wins).")] = 0,
    temperature: Annotated[float, typer.Option(min=0.0, metavar="T", help="0 = greedy (deterministic); a line's temperature wins.")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, metavar="P", help="Nucleus sampling cut (1 = off).")] = 1.0,
    top_k: Annotated[int, typer.Option(min=0, metavar="K", help="Top-k sampling cut (0 = off).")] = 0,
    seed: Annotated[int, typer.Option(metavar="N", help="Job seed: a line without its own seed samples from (seed, line number), so results never depend on batching.")] = 0,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", metavar="TEXT", help="Stop string; repeat the option for more than one.")] = None,
    min_p: Annotated[float, typer.Option(min=0.0, max=1.0, metavar="P", help="Drop tokens less likely than min_p x the most likely one (0 = off).")] = 0.0,
    presence_penalty: Annotated[float, typer.Option(min=-2.0, max=2.0, metavar="X", help="Subtracted from the logit of every token already in the output (OpenAI's).")] = 0.0,
    frequency_penalty: Annotated[float, typer.Option(min=-2.0, max=2.0, metavar="X", help="Subtracted once per occurrence in the output so far (OpenAI's).")] = 0.0,
    repetition_penalty: Annotated[float, typer.Option(min=0.01, metavar="X", help="Logits of prompt and output tokens divided by it (1 = off; 1.1 discourages repeats).")] = 1.0,
    n: Annotated[int, typer.Option("--samples", "-n", min=1, max=128, metavar="N", help="Samples of each prompt (a line's n wins); a line's record then lists them as choices.")] = 1,
    logprobs: Annotated[Optional[int], typer.Option(min=0, max=20, metavar="N", help="Report each output token's logprob and the N most likely tokens (a line's logprobs wins).", show_default=False)] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Check every line first; any bad line stops the job before the model loads.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start OUTPUT over instead of resuming it.")] = False,
    plan: Annotated[Optional[Path], typer.Option("--plan", metavar="FILE", help="Run a plan written by `batchllm plan --json` (checked against this input).")] = None,
    no_prefix_sharing: Annotated[bool, typer.Option("--no-prefix-sharing", help="Compute every prompt whole (to measure what sharing buys).")] = False,
    token_budget: Annotated[Optional[int], typer.Option(min=1, metavar="N", help="Tokens per engine step (default: configs/engine/default.toml for the device).")] = None,
    device: Annotated[Optional[str], typer.Option(metavar="DEVICE", help="cpu or cuda[:N]; default: cuda when present. A comma list (cuda:0,cuda:1) runs one engine per device, the prefix groups shared out between them.")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, metavar="N", help=THREADS_HELP, show_default=False)] = None,
    ray: Annotated[Optional[str], typer.Option("--ray", metavar="ADDRESS", help="Run on a Ray cluster (needs the ray extra of batchllm-cli): local starts one on this machine, auto or HOST:PORT joins one. One engine per GPU (per CPU with --device cpu), whole prefix groups shared out between them.", show_default=False)] = None,
    errors: Annotated[Optional[Path], typer.Option("--errors", metavar="FILE", help="Write failed lines there (OpenAI's error-file shape) and only successes to OUTPUT; resumed with it.", show_default=False)] = None,
    served_model_name: Annotated[Optional[list[str]], typer.Option("--served-model-name", metavar="NAME", help="A model name OpenAI bodies may ask for (repeatable); a line naming another gets a 404 model_not_found record. Default: any name is answered.", show_default=False)] = None,
    ordered: Annotated[bool, typer.Option("--ordered", help="Write the records in input order (held in a bounded window, spilled to disk past it; resumable).")] = False,
    allow_bad_lines: Annotated[bool, typer.Option("--allow-bad-lines", help="Exit 0 when the job finished with some bad lines (their error records are data), not 8.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no summary; errors only.")] = False,
) -> None:
    """Answer every prompt of INPUT into OUTPUT, sharing the prompts' common prefixes.

    Bad lines get an error record (with their line number) and the run goes on. Each result
    is written and flushed as its request finishes; run the same command again to resume.
    """
    console = Console(stderr=True)
    # signals first: a Ctrl-C while the imports below run stops at once, without a traceback
    with StopSignals() as stop_flag, handled(), ExitStack() as held:
        from batchllm_cli.io.job import check_paths
        from batchllm_cli.io.lock import OutputLock
        from batchllm_cli.io.writer import STDIO

        lock = None
        if output != STDIO:  # before anything slow (torch): a second run on OUTPUT is refused at once
            check_paths(input, output)
            lock = held.enter_context(OutputLock(output))

        from batchllm_cli.cli.backend import EngineBackend
        from batchllm_cli.cli.progress import make_reporter
        from batchllm_cli.cli.render import job_summary_table
        from batchllm_cli.cli.stdio import input_file
        from batchllm_cli.cli.threads import set_threads
        from batchllm_cli.engine.config import load_engine_config
        from batchllm_cli.engine.parallel import parse_devices
        from batchllm_cli.errors import PlanError
        from batchllm_cli.io.fingerprint import JobFingerprint
        from batchllm_cli.io.job import JobOptions, run_job
        from batchllm_cli.types import SamplingParams

        if any(not s for s in stop or ()):
            from batchllm_cli.errors import InputError

            raise InputError("--stop: a stop string cannot be empty (it would stop every request at once)")
        defaults = SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, stop=tuple(stop or ()),
            min_p=min_p, presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
            repetition_penalty=repetition_penalty, logprobs=logprobs, min_tokens=min_tokens,
        )
        devices = parse_devices(device) if device and "," in device else None
        config = load_engine_config(
            devices[0] if devices else device, token_budget=token_budget,
            prefix_sharing=not no_prefix_sharing, seed=seed,
        )
        set_threads(threads, config)
        if _random_weights(model) and not quiet:
            console.print(f"[yellow]warning:[/] {model} has random weights: text is meaningless, use for speed only", highlight=False)
        settings = {
            "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "top_k": top_k,
            "seed": seed, "stop": list(defaults.stop), "dtype": config.dtype,
        }
        # options newer than the fingerprint join it only when set: older outputs still resume
        settings.update((k, getattr(defaults, k)) for k, off in _OFF.items() if getattr(defaults, k) != off)
        if n != 1:
            settings["n"] = n
        # where records go changes what OUTPUT holds: a resume must keep them the same
        if errors is not None:
            settings["errors"] = str(errors.resolve())
        if ordered:
            settings["ordered"] = True
        if served_model_name:
            settings["served_model_names"] = sorted(set(served_model_name))
        with ExitStack() as inputs:
            with stop_flag.at_once():  # copying a pipe or hashing a big file: stop right there
                in_path, in_name = inputs.enter_context(input_file(input))
                fingerprint = JobFingerprint.make(in_path, model_key(model), settings)
                cluster = None if ray is None else _ray_cluster(ray, config.device, devices)
                if cluster is not None:  # the sidecar says where the job ran
                    fingerprint = replace(fingerprint, runner=cluster.describe())
            opts = JobOptions(in_path, output, fingerprint, strict=strict, overwrite=overwrite, errors_path=errors,
                              ordered=ordered, served_models=frozenset(served_model_name) if served_model_name else None)
            with make_reporter(console, quiet) as reporter:
                try:
                    summary = run_job(
                        opts,
                        lambda: EngineBackend(model, config, defaults, plan, on_phase=reporter.phase,
                                              devices=devices, default_n=n, ray=cluster),
                        RunningWatch(reporter, stop_flag),
                        should_stop=stop_flag.get,
                        lock=lock,
                    )
                except PlanError as exc:
                    fix = f"batchllm plan {input} --json {plan}"
                    same = "--model, --max-tokens, --samples and --no-prefix-sharing"
                    raise PlanError(f"{exc}\n  to plan this run: `{fix}` with the same {same}") from None
        if summary.lines == 0:
            console.print(f"[yellow]warning:[/] {in_name} has no input lines: nothing to do", highlight=False)
            return
        if not quiet:
            console.print(job_summary_table(summary))
            for name, count in sorted(summary.requested_models.items()):
                if not served_model_name and name != summary.answered_by:
                    console.print(f"{count} line(s) named model {name!r}: answered by {summary.answered_by} "
                                  "(--served-model-name makes other names a 404)", highlight=False)
        if summary.bad_lines:
            where = f"are in {errors}" if errors else "went to standard output" if output == STDIO else f"are in {output}"
            console.print(
                f"[yellow]{summary.bad_lines} input line(s) could not run: their error records "
                f"{where}[/]", highlight=False,
            )
            if not allow_bad_lines:
                raise typer.Exit(EXIT_LINES_FAILED)


# Sampling options added after the first fingerprint, and their "off" values.
_OFF = {"min_tokens": 0, "min_p": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0, "logprobs": None}


def _random_weights(model: str | None) -> bool:
    """Whether `model` names a random-weight preset (its text means nothing)."""
    from batchllm_cli.models.presets import get_preset

    preset = get_preset(model) if model else None
    return preset is not None and preset.source == "random"


def _ray_cluster(address: str, device: str, devices: list[str] | None) -> Any:
    """--ray: the cluster the job runs on (distributed/ray_job.py), connected now."""
    from batchllm_cli.distributed.ray_job import connect
    from batchllm_cli.errors import ConfigError

    if devices:
        raise ConfigError("--ray runs one engine per GPU of the cluster: give --device cpu or cuda, not a list")
    return connect(address, device)


def model_key(model: str | None) -> str:
    """The model as the fingerprint (and the sidecar) names it: the preset's own name (the
    default and aliases too: `smollm2-135m`), or a file's resolved path."""
    from batchllm_cli.models.presets import DEFAULT_PRESET, get_preset

    path = Path(model).expanduser() if model is not None else None
    if path is not None and path.exists():
        return str(path.resolve())
    preset = get_preset(model or DEFAULT_PRESET)
    return preset.name if preset is not None else str(model)
