"""LLM: the library's entry point, `LLM(model=...).generate(prompts, SamplingParams(...))`."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from batchllm_cli.engine.config import EngineConfig, check_device, load_engine_config
from batchllm_cli.engine.engine import ProgressFn, run_plan
from batchllm_cli.engine.runner import ModelRunner, kv_pool_blocks
from batchllm_cli.engine.stop import StopChecker
from batchllm_cli.engine.tokenizer import Tokenizer
from batchllm_cli.engine.warmup import WarmupReport, warm_up
from batchllm_cli.errors import ConfigError, InputError, ModelError
from batchllm_cli.planner import Plan, PlanSettings, build_plan
from batchllm_cli.types import Completion, Request, SamplingParams

Prompt = str | Sequence[dict] | Sequence[int] | np.ndarray
# EngineConfig fields that only the scheduler and planner read (LLM.with_scheduling may change them)
_SCHEDULING_FIELDS = frozenset({"policy", "prefix_sharing", "token_budget", "memory_bound", "min_prefix_tokens",
                                "max_running", "warmup"})


class LLM:
    """A model loaded with its tokenizer and KV cache, ready to run batches of prompts.

    model: None or "smollm2" (the embedded model), a preset name, a .gguf path or a directory
    with config.json + safetensors. config / overrides: EngineConfig fields (device, dtype,
    token_budget, num_kv_blocks, ...). tokenizer: the model's Tokenizer when the caller has
    loaded it already (the CLI tokenizes before loading the model).
    """

    def __init__(
        self, model: str | None = None, *, config: EngineConfig | None = None,
        tokenizer: Tokenizer | None = None, **overrides: Any,
    ) -> None:
        from batchllm_cli.models.loader import load_model, resolve_model
        from batchllm_kernels import get_ops

        config = _engine_config(config, overrides)
        source = resolve_model(model)
        loaded = load_model(source, config.dtype, config.device, get_ops(config.device))
        self._setup(source, loaded, config, tokenizer)

    @classmethod
    def from_loaded(
        cls, source: Any, model: Any, *, config: EngineConfig | None = None, **overrides: Any
    ) -> "LLM":
        """An LLM around an already loaded model (its ModelSource and LlamaForCausalLM), e.g. to
        run several engine settings on one model without loading it again."""
        llm = cls.__new__(cls)
        llm._setup(source, model, _engine_config(config, overrides))
        return llm

    def with_scheduling(self, **overrides: Any) -> "LLM":
        """This LLM with other scheduling settings (policy, prefix_sharing, token_budget,
        memory_bound, min_prefix_tokens), sharing its model, tokenizer and model runner:
        one KV cache and the CUDA graphs captured so far serve every setting (benchmarks
        compare settings on exactly the same runner)."""
        runner_fields = set(overrides) - _SCHEDULING_FIELDS
        if runner_fields:
            raise ConfigError(
                f"with_scheduling cannot change {', '.join(sorted(runner_fields))}: they shape the "
                "model runner (make another LLM)"
            )
        view = LLM.__new__(LLM)
        view.__dict__.update(self.__dict__)
        view.config = self.config.with_overrides(**overrides)
        return view

    def _setup(self, source: Any, model: Any, config: EngineConfig, tokenizer: Tokenizer | None = None) -> None:
        if config.is_cuda:
            import torch

            # Triton launches on the current device, not the tensors' one: cuda:1 must be current.
            torch.cuda.set_device(torch.device(config.device))
        self.config = config
        self.source = source
        self.model = model
        self.model_config = model.config
        self.tokenizer = tokenizer or _load_tokenizer(source)
        if self.tokenizer.vocab_size > self.model_config.vocab_size:
            raise ModelError(
                f"the tokenizer of {source.name} has {self.tokenizer.vocab_size} tokens but the model "
                f"embeds only {self.model_config.vocab_size}: they do not belong together"
            )
        self.max_model_len = self.model_config.max_position
        self.num_kv_blocks = kv_pool_blocks(config, self.model_config)
        self.runner = ModelRunner(model, config, self.num_kv_blocks)

    # ---- requests and plans ----------------------------------------------------------------

    def make_requests(
        self,
        prompts: Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[Request]:
        """Tokenized requests: a str is a plain prompt, a list of dicts chat messages, a list of
        ints token ids. Raises InputError for an empty prompt or one too long for the model."""
        n = len(prompts)
        params = _per_prompt(sampling_params, n)
        if ids is not None and len(ids) != n:
            raise InputError(f"{len(ids)} ids for {n} prompts")
        texts = {i: p for i, p in enumerate(prompts) if isinstance(p, str)}
        encoded = dict(zip(texts, self.tokenizer.encode_batch(list(texts.values()))))
        requests = []
        for i, prompt in enumerate(prompts):
            if i in encoded:
                token_ids = encoded[i]
            elif len(prompt) > 0 and isinstance(prompt[0], dict):
                token_ids = self.tokenizer.encode_chat(prompt)  # type: ignore[arg-type]
            else:
                token_ids = prompt
            rid = str(i) if ids is None else ids[i]
            requests.append(Request(i, rid, self._check_ids(rid, token_ids, params[i]), params[i]))
        return requests

    def _check_ids(self, rid: str, token_ids: Any, params: SamplingParams) -> np.ndarray:
        arr = np.asarray(token_ids, dtype=np.int64)
        if arr.ndim != 1 or arr.shape[0] == 0:
            raise InputError(f"request {rid!r}: the prompt is empty")
        if arr.min() < 0 or arr.max() >= self.model_config.vocab_size:
            raise InputError(f"request {rid!r}: token ids must be in [0, {self.model_config.vocab_size})")
        if params.logit_bias and params.logit_bias[-1][0] >= self.model_config.vocab_size:
            raise InputError(f"request {rid!r}: logit_bias token ids must be in [0, {self.model_config.vocab_size})")
        if params.stop_token_ids and max(params.stop_token_ids) >= self.model_config.vocab_size:
            raise InputError(f"request {rid!r}: stop_token_ids must be in [0, {self.model_config.vocab_size})")
        total = arr.shape[0] + params.max_tokens
        if total > self.max_model_len:
            raise InputError(
                f"request {rid!r}: {arr.shape[0]} prompt tokens + max_tokens {params.max_tokens} = "
                f"{total} exceeds the model's context of {self.max_model_len} tokens: shorten the "
                "prompt or lower max_tokens"
            )
        return arr.astype(np.int32)

    def plan_settings(self) -> PlanSettings:
        return PlanSettings.from_engine(self.config, self.num_kv_blocks)

    def plan(self, requests: Sequence[Request]) -> Plan:
        """The prefix-sharing plan of `requests` for this engine's settings."""
        return build_plan(requests, self.plan_settings())

    # ---- running ---------------------------------------------------------------------------

    def warm_up(self, requests: Sequence[Request], plan: Plan) -> WarmupReport:
        """Captures the CUDA graphs and compiles the kernels that running `plan` will need
        (engine/warmup.py); `stream` does it first when the config's `warmup` is on."""
        c = self.config
        return warm_up(self.runner, requests, plan.groups, token_budget=c.token_budget, memory_bound=c.memory_bound,
                       policy=c.policy, max_running=c.max_running)

    def stream(
        self,
        requests: Sequence[Request],
        plan: Plan | None = None,
        on_progress: ProgressFn | None = None,
        warm: bool | None = None,
    ) -> Iterator[Completion]:
        """Runs `requests` (indices 0..n-1), yielding each Completion as its request finishes.
        warm: warm up first (None: the config's `warmup`; False when the caller did)."""
        if plan is None:
            plan = self.plan(requests)
        else:
            plan.validate(requests)
        if self.config.warmup if warm is None else warm:
            self.warm_up(requests, plan)
        stop = StopChecker(self.tokenizer, self.model_config.eos_token_ids)
        yield from run_plan(
            self.runner,
            requests,
            plan,
            stop,
            token_budget=self.config.token_budget,
            memory_bound=self.config.memory_bound,
            on_progress=on_progress,
            policy=self.config.policy,
            max_running=self.config.max_running,
        )

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        on_progress: ProgressFn | None = None,
    ) -> list[Completion]:
        """Completions of `prompts`, in input order."""
        requests = self.make_requests(prompts, sampling_params)
        out: list[Completion | None] = [None] * len(requests)
        for c in self.stream(requests, on_progress=on_progress):
            out[c.index] = c
        return out  # type: ignore[return-value]


def _engine_config(config: EngineConfig | None, overrides: dict[str, Any]) -> EngineConfig:
    if config is None:
        return load_engine_config(overrides.pop("device", None), **overrides)
    config = config.with_overrides(**overrides) if overrides else config
    check_device(config.device)
    return config


def _per_prompt(params: SamplingParams | Sequence[SamplingParams] | None, n: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * n
    if isinstance(params, SamplingParams):
        return [params] * n
    if len(params) != n:
        raise InputError(f"{len(params)} sampling params for {n} prompts")
    return list(params)


def _load_tokenizer(source: Any) -> Tokenizer:
    """The tokenizer a ModelSource names (a directory, or a GGUF file in one)."""
    return Tokenizer.load(source.tokenizer_dir, source.tokenizer_gguf_file)
