"""`batchllm bench`: synthetic workloads of the paper through our engine and the peers, warmed up,
repeated and interleaved; one JSON document (every run) and a PNG plot beside it."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterator, Optional

import typer
from rich.console import Console

from batchllm_cli.cli.errors import EXIT_SIGINT, error_line, handled
from batchllm_cli.errors import ConfigError, InputError

if TYPE_CHECKING:
    from batchllm_cli.bench.report import BenchReport
    from batchllm_cli.bench.session import Session

PEERS = ("hf", "vllm-like", "sglang-like")

BENCH_EPILOG = """\
Examples:

  batchllm bench                                                     # list the workloads and suites

  batchllm bench shared-2000-200-d16 --model tiny-llama --device cpu --requests 64 --repeats 2 --peers vllm-like

  batchllm bench peers-1b industry --model llama-3.2-1b --peers vllm-like,sglang-like --scale 0.25

  batchllm bench --suite paper --scale 0.05 --out results/paper.json   # the paper's cases, 5% of the requests

  batchllm bench long-prefix-16000-d16 -m llama-3.1-8b --kv-pool-like llama-3.1-8b@a100-80gb --profile

  batchllm bench --suite paper --predict h200                        # the paper's full size, dry runs only

  batchllm bench --readme-table results/paper.json                   # README table rows from a saved report

Each system runs the whole workload once untimed (compiles, CUDA graphs), then --repeats timed
runs, interleaved (A B C A B C ...); the table shows the median and the min-max. The JSON keeps
every run; the PNG plot is written beside it when matplotlib is installed (the plot extra).
Exit codes: 0 done, 2 bad option or unreadable report, 3 output unwritable, 4 model error,
5 bad workload or setting, 7 KV pool too small, 130 interrupted (finished workloads are saved, and
so are the timed runs of the one under way: the JSON is rewritten after every run).
"""


@dataclass(frozen=True)
class _Args:
    """The command's options, as typed (bench's parameters, one to one)."""

    workloads: list[str] | None
    suite: str | None
    cases: list[str] | None
    model: str | None
    device: str | None
    requests: int | None
    scale: float | None
    peers: list[str] | None
    no_sharing_too: bool
    repeats: int
    warmup: bool
    kv_tokens: int | None
    kv_pool_like: str | None
    kv_blocks: int | None
    token_budget: int | None
    mixed_graph_tokens: int | None
    threads: int | None
    profile: bool
    out: Path | None
    readme_table: Path | None
    replot: Path | None
    predict: str | None
    dry_run: bool


@dataclass
class _Saved:
    """Where the finished workloads' report went, for the message of an interrupted bench."""

    path: Path | None = None
    count: int = 0
    running: str = ""
    partial_runs: int = 0  # timed runs of the workload under way, saved in an incomplete report


def bench(
    workloads: Annotated[
        Optional[list[str]],
        typer.Argument(help="Workloads of configs/workloads (e.g. peers-1b) or .toml files; none (and no --suite): list them.", show_default=False, metavar="WORKLOAD"),
    ] = None,
    suite: Annotated[Optional[str], typer.Option(help="A suite of cases (configs/workloads/suites): paper.", show_default=False)] = None,
    cases: Annotated[
        Optional[list[str]],
        typer.Option("--cases", help="With --suite: only these of its cases (comma list of workload names), targets kept.", show_default=False),
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option("--model", "-m", help="Preset (llama-3.2-1b, tiny-llama, ...), .gguf file or model directory. Default: the embedded SmolLM2; with --suite, each case's model.", show_default=False),
    ] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda[:N]; default: cuda when present.", show_default=False)] = None,
    requests: Annotated[Optional[int], typer.Option("--requests", min=1, help="Scale each workload to about N requests (whole groups).", show_default=False)] = None,
    scale: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Scale each workload's requests by F (0 < F <= 1), e.g. 0.05 for a quick --suite paper; a suite's KV pools scale by F too (each keeps its share of the workload).", show_default=False)] = None,
    peers: Annotated[
        Optional[list[str]],
        typer.Option("--peers", help="Comma list of peers run beside ours: vllm-like, sglang-like (their scheduling and LRU prefix cache on our engine), hf (transformers generate_batch). With --suite: instead of the suite's systems.", show_default=False),
    ] = None,
    no_sharing_too: Annotated[bool, typer.Option("--no-sharing-too", help="Also run our engine with prefix sharing off.")] = False,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs of each system, interleaved across systems.")] = 3,
    warmup: Annotated[bool, typer.Option("--warmup/--no-warmup", help="Run the whole workload once per system, untimed, before timing.")] = True,
    kv_tokens: Annotated[Optional[int], typer.Option(min=1, help="A KV pool of N tokens (stated in the report).", show_default=False)] = None,
    kv_pool_like: Annotated[Optional[str], typer.Option(help="A KV pool of the size MODEL gets on GPU (configs/gpus.toml), e.g. llama-3.1-8b@a100-80gb: the paper's memory regime.", show_default=False)] = None,
    kv_blocks: Annotated[Optional[int], typer.Option(min=1, help="KV pool size in blocks (default: the engine config's).", show_default=False)] = None,
    token_budget: Annotated[Optional[int], typer.Option(min=1, help="Tokens per engine step (default: configs/engine/default.toml).", show_default=False)] = None,
    mixed_graph_tokens: Annotated[Optional[int], typer.Option(min=0, metavar="N", help="On CUDA: steps of up to N tokens that no decode graph holds replay piecewise graphs; 0: they run eagerly (default: configs/engine/default.toml).", show_default=False)] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="torch CPU threads (on a busy CPU, 1 can be much faster).", show_default=False)] = None,
    profile: Annotated[bool, typer.Option("--profile", help="One more run per system under the torch profiler (CUDA activity): GPU kernel time / wall, top kernels.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="JSON report (the PNG plot goes beside it). Default: results/bench-NAME.json.", show_default=False)] = None,
    readme_table: Annotated[Optional[Path], typer.Option(help="Print the README performance-table rows of a saved report and exit.", show_default=False)] = None,
    replot: Annotated[Optional[Path], typer.Option(help="Draw the PNG plot of a saved report (beside it, or at --out) and exit.", show_default=False)] = None,
    predict: Annotated[Optional[str], typer.Option("--predict", metavar="GPU", help="No runs: dry-run each system's scheduler and print the roofline time of its work on GPU (configs/gpus.toml, e.g. h200), at any scale, e.g. the paper's full size.", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cases, systems and runs that would run, and exit.")] = False,
) -> None:
    """Benchmark workloads: requests/s, output tokens/s, prefill computed, peak KV, steps, step fill
    and the fraction of the roofline, per system: the median and the min-max of repeated, interleaved runs."""
    args = _Args(**{k: v for k, v in locals().items()})
    saved = _Saved()
    with handled():
        try:
            _bench(args, saved)
        except KeyboardInterrupt:
            runs = f" and {saved.partial_runs} timed run(s) of the one under way" if saved.partial_runs else ""
            where = f"; {saved.count} finished workload(s){runs} are in {saved.path}" if saved.path else "; nothing was written"
            during = f" during {saved.running}" if saved.running else ""
            error_line(f"bench interrupted{during}{where}")
            raise typer.Exit(EXIT_SIGINT) from None


def _bench(o: _Args, saved: _Saved) -> None:
    out_console = Console(highlight=False)
    if not out_console.is_terminal:  # a log file: the whole table, not cut at 80 columns
        out_console = Console(highlight=False, width=160)
    err = Console(stderr=True, highlight=False)
    if o.readme_table is not None:
        from batchllm_cli.bench.readme_table import readme_rows

        for row in readme_rows(_load_document(o.readme_table), str(o.readme_table)):
            typer.echo(row)
        return
    if o.replot is not None:
        from batchllm_cli.bench.plot import write_plot

        path = write_plot(_load_document(o.replot), o.out or o.replot.with_suffix(".png"))
        err.print(f"plot written to {path}")
        return
    if not o.workloads and o.suite is None:
        _list(out_console)
        return
    session = _session(o)
    session.check()
    if o.dry_run:
        _show_cases(out_console, session)
        return
    if o.predict is not None:
        from batchllm_cli.cli.bench_predict import run_predictions

        path = run_predictions(session, o.predict, o.out or Path("results") / f"predict-{session.name}.json",
                               out_console, lambda text: err.print(text, style="dim"))
        out_console.print(f"prediction written to {path}")
        return
    from batchllm_cli.bench.session import DEFAULT_MODEL, run_session
    from batchllm_cli.cli.bench_display import make_display

    out_path = o.out or Path("results") / f"bench-{session.name}.json"

    def on_report(report: BenchReport, path: Path) -> None:
        saved.path, saved.count, saved.partial_runs = path, saved.count + 1, 0
        _print_report(out_console, report)

    def on_checkpoint(partial: BenchReport, path: Path) -> None:
        saved.path, saved.partial_runs = path, len(partial.runs)

    with _torch_threads(o.threads), make_display(err, o.repeats) as display:

        def on_case(case: Any) -> None:
            saved.running = f"{case.spec.name} ({case.model or DEFAULT_MODEL})"

        run_session(session, out_path, display.note, display.event, on_report, on_case, on_checkpoint)
    saved.running = ""
    out_console.print(f"results written to {out_path}")
    _plot(out_path, err)


def _session(o: _Args) -> Session:
    """What to run, from the workloads or the suite, scaled; ConfigError for what cannot be."""
    from batchllm_cli.bench.runner import POLICY_SYSTEMS, SYSTEM_HF, SYSTEM_NO_SHARING, SYSTEM_SHARING
    from batchllm_cli.bench.session import PoolChoice, Session
    from batchllm_cli.bench.suite import Case, load_suite, pick_cases, scaled, scaled_case
    from batchllm_cli.bench.workloads import load_spec

    if o.requests is not None and o.scale is not None:
        raise ConfigError("give --requests or --scale, not both")
    if sum(x is not None for x in (o.kv_tokens, o.kv_pool_like, o.kv_blocks)) > 1:
        raise ConfigError("give one of --kv-tokens, --kv-pool-like and --kv-blocks")
    if o.scale == 0:
        raise ConfigError("--scale must be in (0, 1], got 0")

    def sized(spec: Any) -> Any:
        if o.requests is not None:
            return spec.scaled(o.requests)
        return scaled(spec, o.scale) if o.scale is not None else spec

    peer_names = _parse_peers(o.peers or [])
    systems = [SYSTEM_SHARING] + ([SYSTEM_NO_SHARING] if o.no_sharing_too else [])
    systems += [p for p in peer_names if p in POLICY_SYSTEMS] + ([SYSTEM_HF] if "hf" in peer_names else [])
    if o.suite is not None:
        if o.workloads:
            raise ConfigError("--suite runs its own workloads: leave out WORKLOAD (--cases picks some of them)")
        suite = load_suite(o.suite)
        chosen = pick_cases(suite, _split(o.cases)) if o.cases else suite.cases
        # --scale shrinks a case's pool with its requests; --requests N keeps the pools as they are
        cases = [replace(scaled_case(c, o.scale) if o.scale is not None else replace(c, spec=sized(c.spec)),
                         model=o.model or c.model) for c in chosen]  # fmt: skip
        name = f"suite-{suite.name}"
        if not (o.peers or o.no_sharing_too):
            systems = list(suite.systems)
    else:
        if o.cases:
            raise ConfigError("--cases picks cases of a --suite")
        specs = [sized(load_spec(w)) for w in o.workloads or []]
        name = specs[0].name if len(specs) == 1 else f"{len(specs)}-workloads"
        cases = [Case(spec, o.model, None) for spec in specs]
    command = " ".join(sys.argv[2:]) if len(sys.argv) > 1 and sys.argv[1] == "bench" else None
    return Session(
        name=name, systems=tuple(systems), cases=tuple(cases),
        pools=PoolChoice(o.kv_tokens, o.kv_pool_like, o.kv_blocks), device=o.device,
        token_budget=o.token_budget, mixed_graph_tokens=o.mixed_graph_tokens, repeats=o.repeats, warmup=o.warmup, profile=o.profile,
        header=(("command", f"batchllm bench {command}" if command is not None else None), ("suite", o.suite),
                ("scale", o.scale), ("requests", o.requests)),
    )  # fmt: skip


def _show_cases(console: Console, session: Session) -> None:
    from rich.table import Table

    from batchllm_cli.bench.session import DEFAULT_MODEL, default_block_size

    block_size = default_block_size()
    title = f"{session.name}: {len(session.cases)} case(s); each system: {int(session.warmup)} warm-up + {session.repeats} timed runs"
    table = Table(title=title)
    for col in ("workload", "model", "requests", "KV pool", "targets"):
        table.add_column(col, justify="right" if col == "requests" else "left")
    for c in session.cases:
        pool = session.pools.pool_for(c, block_size)
        table.add_row(
            c.spec.name, c.model or DEFAULT_MODEL, f"{c.spec.expected_requests:,.0f}",
            "engine default" if pool is None else f"{pool.tokens:,} tokens ({pool.source.split(':')[0]})",
            ", ".join(f"{t.over} x{t.at_least:g}" for t in c.targets) or "-",
        )  # fmt: skip
    console.print(table)
    console.print(f"systems: {', '.join(session.systems)}")


def _print_report(console: Console, report: BenchReport) -> None:
    from rich.markup import escape

    from batchllm_cli.bench.table import render_table

    console.print(render_table(report))
    for r in report.runs:
        for note in r.notes:
            console.print(escape(f"{r.system} run {r.repeat + 1}: {note}"), style="dim")
        if r.short_outputs:
            console.print(f"{r.system}: {r.short_outputs} requests stopped before {report.workload['output_len']} tokens", style="yellow")
        if r.graph_captures:
            console.print(f"{r.system} run {r.repeat + 1}: {r.graph_captures} CUDA graph(s) captured inside the timed run", style="yellow")
        if r.kernel_compiles:
            console.print(f"{r.system} run {r.repeat + 1}: {r.kernel_compiles} Triton kernel variant(s) compiled inside the timed run", style="yellow")
        if r.warmup_s is not None and r.warmup_s >= 1.0:
            console.print(f"{r.system} run {r.repeat + 1}: the engine's start-up warm-up took {r.warmup_s:.1f} s (untimed)", style="dim")
    for s in report.unstable():
        console.print(f"{s}: repeated runs differ by more than 10% from their median", style="yellow")
    for t in report.to_dict()["targets"]:
        if t["met"] is None:
            console.print(f"target batchllm >= {t['at_least']:g}x {t['over']}: not checked ({t['why']})", style="yellow")
        else:
            verdict = "met" if t["met"] else "MISSED"
            console.print(f"target batchllm >= {t['at_least']:g}x {t['over']} ({t['vs']}): {t['ratio']:.2f}x, {verdict}",
                          style="green" if t["met"] else "bold red")  # fmt: skip
    for s, p in report.profiles.items():
        frac = "-" if p["busy_fraction"] is None else f"{p['busy_fraction']:.0%}"
        top = ", ".join(f"{k['name'][:40]} {k['ms']:.1f} ms" for k in p["top"][:3])
        timed = ""
        if p.get("busy_fraction_of_timed") is not None:
            timed = f"; over the median unprofiled run's {p['timed_wall_s']:.3f} s: {p['busy_fraction_of_timed']:.0%}"
        console.print(escape(f"{s} profile: {p['what']} {p['busy_s']:.3f} / {p['wall_s']:.3f} s ({frac}){timed}; top: {top}"))


def _plot(out_path: Path, err: Console) -> None:
    from batchllm_cli.bench.plot import have_matplotlib, write_plot

    if not have_matplotlib():
        err.print('no plot: matplotlib is not installed (pip install "batchllm-cli[plot]"; or later: batchllm bench --replot REPORT.json)')
        return
    path = write_plot(json.loads(out_path.read_text()), out_path.with_suffix(".png"))
    err.print(f"plot written to {path}")


def _load_document(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"no report {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not a bench report (JSON): {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != 2 or not isinstance(doc.get("reports"), list):
        raise InputError(f"{path} is not a bench report of this version (written by `batchllm bench --out`)")
    return doc


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


def _split(items: list[str]) -> list[str]:
    """Comma lists given once or more, as one list of names."""
    return [p.strip() for item in items for p in item.split(",") if p.strip()]


def _parse_peers(peers: list[str]) -> list[str]:
    names = _split(peers)
    unknown = [p for p in names if p not in PEERS]
    if unknown:
        raise ConfigError(f"unknown peer(s) {', '.join(unknown)}: choose from {', '.join(PEERS)}")
    return names


def _list(console: Console) -> None:
    from rich.table import Table

    from batchllm_cli.bench.suite import suite_names
    from batchllm_cli.bench.workloads import load_spec, workload_names

    table = Table(title="workloads (batchllm bench NAME)")
    table.add_column("name")
    table.add_column("requests", justify="right")
    table.add_column("what")
    for name in workload_names():
        spec = load_spec(name)
        table.add_row(name, f"{spec.expected_requests:,.0f}", spec.description)
    console.print(table)
    console.print(f"suites (batchllm bench --suite NAME): {', '.join(suite_names())}")
