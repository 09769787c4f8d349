"""`LLMPredictor`: our engine as a Ray Data callable class, for pipelines users build themselves.

    ds.map_batches(LLMPredictor, fn_constructor_kwargs={"model": ..., "sampling": {...}},
                   batch_size=4096, concurrency=8, num_gpus=1)

Each batch of prompt rows is planned on its own (global prefix analysis over the batch: the
bigger the batch, and the closer rows with a common prefix sit, the more is shared) and answered
by the actor's one engine. Rows hold "prompt" (text), "messages" (chat turns) or
"prompt_token_ids"; columns named like SamplingParams fields ("max_tokens", "temperature",
"seed", ...) override the job's `sampling` for their row. The output rows are the input rows
plus "generated_text", "finish_reason", "prompt_tokens", "completion_tokens" and
"shared_prefix_tokens". `batchllm run --ray` plans the whole file on the driver instead
(ray_job.py); this class is for data that lives in a Ray pipeline already.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import numpy as np

from batchllm_cli.types import SamplingParams

PROMPT_COLUMNS = ("prompt", "messages", "prompt_token_ids")
# per-row sampling columns: plain values only (stop strings and logit_bias stay job-wide)
ROW_FIELDS = tuple(f.name for f in fields(SamplingParams) if f.name not in ("stop", "logit_bias"))


class LLMPredictor:
    """One engine per actor (model loaded once); see the module docstring for rows and output.

    model: as LLM takes it (None: the embedded model; a path must exist on every node).
    sampling: SamplingParams fields for every row (e.g. {"max_tokens": 64}).
    engine: EngineConfig overrides (device, token_budget, ...); on a GPU actor the default
    device is its GPU.
    """

    def __init__(self, model: str | None = None, *, sampling: dict[str, Any] | None = None, **engine: Any) -> None:
        from batchllm_cli.engine.llm import LLM

        self.llm = LLM(model, **engine)
        self.defaults = SamplingParams(**(sampling or {}))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        column = next((c for c in PROMPT_COLUMNS if c in batch), None)
        if column is None:
            from batchllm_cli.errors import InputError

            raise InputError(f"LLMPredictor needs a column named one of {', '.join(PROMPT_COLUMNS)}; got {', '.join(batch)}")
        prompts = [_prompt(column, value) for value in batch[column]]
        own = [f for f in ROW_FIELDS if f in batch]
        params = [self._row_params(batch, own, i) if own else self.defaults for i in range(len(prompts))]
        requests = self.llm.make_requests(prompts, params)
        done: list[Any] = [None] * len(requests)
        for c in self.llm.stream(requests, self.llm.plan(requests)):
            done[c.index] = c
        out = dict(batch)
        out["generated_text"] = np.asarray([c.text for c in done], dtype=object)
        out["finish_reason"] = np.asarray([c.finish_reason for c in done], dtype=object)
        for name in ("prompt_tokens", "completion_tokens", "shared_prefix_tokens"):
            out[name] = np.asarray([getattr(c, name) for c in done], dtype=np.int64)
        return out

    def _row_params(self, batch: dict[str, np.ndarray], own: list[str], i: int) -> SamplingParams:
        values = {f: _plain(batch[f][i]) for f in own}
        return replace(self.defaults, **{f: v for f, v in values.items() if v is not None})  # a null: the job's


def _prompt(column: str, value: Any) -> Any:
    if column == "prompt":
        return str(value)
    if column == "messages":  # Arrow gives a list of structs as an array of dicts
        return [dict(m) for m in value]
    return np.asarray(value, dtype=np.int64)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value SamplingParams expects (None stays None)."""
    return value.item() if isinstance(value, np.generic) else value
