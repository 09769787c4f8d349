"""`batchllm bench`: run a synthetic workload of the paper through our engine and the peers."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from batchllm_cli.errors import ConfigError

if TYPE_CHECKING:
    from batchllm_cli.bench.model import BenchModel
    from batchllm_cli.bench.report import BenchReport
    from batchllm_cli.bench.workloads import Saving, Workload, WorkloadSpec

PEERS = ("hf", "vllm-like", "sglang-like")


def bench(
    workload: Annotated[
        Optional[str],
        typer.Argument(help="A workload of configs/workloads (e.g. peers-1b) or a .toml file; none: list them."),
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option("--model", "-m", help="Preset (llama-3.2-1b, tiny-llama, ...), .gguf file or model directory. Default: the embedded SmolLM2."),
    ] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda[:N]; default: cuda when present.")] = None,
    requests: Annotated[
        Optional[int], typer.Option("--requests", "-n", min=1, help="Scale the workload to about N requests.")
    ] = None,
    peers: Annotated[
        Optional[list[str]], typer.Option("--peers", help="Peers to run beside ours: hf (transformers generate_batch); vllm-like, sglang-like (their scheduling and LRU prefix cache on our engine).")
    ] = None,
    no_sharing_too: Annotated[
        bool, typer.Option("--no-sharing-too", help="Also run our engine with prefix sharing off.")
    ] = False,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="JSON results file. Default: results/bench-WORKLOAD.json.")
    ] = None,
    warmup: Annotated[bool, typer.Option(help="Warm each system up on a slice of the workload first (untimed).")] = True,
    kv_blocks: Annotated[
        Optional[int], typer.Option("--kv-blocks", min=1, help="KV pool size in blocks (default: from the engine config).")
    ] = None,
    threads: Annotated[
        Optional[int], typer.Option(min=1, help="torch CPU threads (on a busy CPU, 1 can be much faster).")
    ] = None,
) -> None:
    """Benchmark a workload: requests/s, output tokens/s and prefill tokens saved, per system."""
    from batchllm_cli.bench.workloads import analytic_saving, generate, load_spec, workload_names

    console = Console()
    if workload is None:
        _list_workloads(console, workload_names(), load_spec)
        return
    peer_names = _parse_peers(peers or [])
    spec = load_spec(workload)
    if requests is not None:
        spec = spec.scaled(requests)
    with _torch_threads(threads):
        with console.status(f"generating {spec.name} and loading {model or 'the embedded model'}"):
            work = generate(spec)
            from batchllm_cli.bench.model import load_bench_model

            bench_model = load_bench_model(model, device, num_kv_blocks=kv_blocks)
        systems = _systems(no_sharing_too, peer_names)
        saving = analytic_saving(work, bench_model.config.min_prefix_tokens)
        report = _run(console, bench_model, work, systems, warmup, saving)
    from batchllm_cli.bench.report import render_table

    console.print(render_table(report))
    for r in report.runs:
        for note in r.notes:
            console.print(f"[dim]{r.system}: {note}[/dim]")
        if r.short_outputs:
            console.print(f"[yellow]{r.system}: {r.short_outputs} requests stopped before {spec.output_len} tokens[/yellow]")
    path = report.write(out or Path("results") / f"bench-{spec.name}.json")
    console.print(f"results written to {path}")


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU thread count set for the run and restored after (the CLI can run in-process)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _parse_peers(peers: list[str]) -> list[str]:
    names = [p.strip() for item in peers for p in item.split(",") if p.strip()]
    unknown = [p for p in names if p not in PEERS]
    if unknown:
        raise ConfigError(f"unknown peer(s) {', '.join(unknown)}: choose from {', '.join(PEERS)}")
    return names


def _systems(no_sharing_too: bool, peers: list[str]) -> list[str]:
    from batchllm_cli.bench.runner import POLICY_SYSTEMS, SYSTEM_HF, SYSTEM_NO_SHARING, SYSTEM_SHARING

    systems = [SYSTEM_SHARING]
    if no_sharing_too:
        systems.append(SYSTEM_NO_SHARING)
    systems += [p for p in peers if p in POLICY_SYSTEMS]
    if "hf" in peers:
        systems.append(SYSTEM_HF)
    return systems


def _run(
    console: Console,
    bench_model: BenchModel,
    work: Workload,
    systems: list[str],
    warmup: bool,
    saving: Saving,
) -> BenchReport:
    from batchllm_cli.bench.report import BenchReport, environment, workload_record
    from batchllm_cli.bench.runner import run_systems

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console,
    )  # fmt: skip
    tasks: dict[str, int] = {}

    def on_event(system: str, event: str, payload: Any) -> None:
        if event == "warmup":
            tasks[system] = progress.add_task(f"{system} (warm-up)", total=None, rate="")
        elif event == "start":
            if system in tasks:
                progress.remove_task(tasks[system])
            tasks[system] = progress.add_task(system, total=payload, rate="")
        elif event == "progress":
            rate = payload.output_tokens / payload.elapsed_s if payload.elapsed_s > 0 else 0.0
            progress.update(tasks[system], completed=payload.requests_done, rate=f"{rate:,.0f} tok/s")
        elif event == "done":
            progress.update(tasks[system], completed=payload.num_requests, rate=f"{payload.requests_per_s:.2f} req/s")

    with progress:
        runs = run_systems(bench_model, work, systems, warmup=warmup, on_event=on_event)
    return BenchReport(
        workload=workload_record(work, saving),
        model=bench_model.name,
        device=bench_model.config.device,
        dtype=bench_model.config.dtype,
        runs=tuple(runs),
        environment=environment(),
    )


def _list_workloads(console: Console, names: list[str], load_spec: Callable[[str], WorkloadSpec]) -> None:
    from rich.table import Table

    table = Table(title="workloads (batchllm bench NAME)")
    table.add_column("name")
    table.add_column("requests", justify="right")
    table.add_column("what")
    for name in names:
        spec = load_spec(name)
        table.add_row(name, f"{spec.expected_requests:,.0f}", spec.description)
    console.print(table)
