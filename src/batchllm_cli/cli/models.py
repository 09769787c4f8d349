"""`batchllm models`: the model presets shipped in configs/models and how to name other models."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from batchllm_cli.cli.errors import handled


def models() -> None:
    """List the model presets that --model accepts by name.

    Besides these names, --model takes a .gguf file or a directory with config.json and
    *.safetensors. Presets marked "random" have real shapes and random weights: use them to
    measure speed, not to read their answers.

    Example: batchllm run prompts.jsonl -o out.jsonl --model llama-3.2-1b
    """
    with handled():
        from batchllm_cli.models.presets import list_presets

        table = Table(title="Model presets (--model NAME)")
        table.add_column("name", style="bold")
        table.add_column("parameters", justify="right")
        table.add_column("weights")
        table.add_column("description")
        for p in list_presets():
            table.add_row(p.name, _params(p.num_params), p.source, p.description)
        Console().print(table)


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.0f} M"
