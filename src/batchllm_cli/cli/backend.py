"""The job Backend on the real engine: tokenize the records, plan the whole job, stream results.

Kept apart from the commands so that `run` and `plan` turn records into the same requests (a
plan made by `batchllm plan` fits the run that reads the same file), and so that tests can swap
the engine for io.echo.EchoBackend.
"""

from __future__ import annotations

import hashlib
import os
import time
from array import array
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from batchllm_cli.cli.work_left import WorkLeft
from batchllm_cli.errors import InputError
from batchllm_cli.io.fields import FieldError
from batchllm_cli.io.reader import BadLine, InputRecord, Kind
from batchllm_cli.types import Completion, Request, SamplingParams

KINDS: tuple[Kind, ...] = ("plain", "chat", "openai_chat", "openai_completion")
TOKENIZE_BATCH = 512  # prompts per call of the fast tokenizer (it runs a batch in parallel)
PHASE_EVERY_S = 10.0  # seconds between progress reports of a long tokenizing phase
PLAN_FIXED_BYTES = 1 << 20  # a plan's settings and stats: a few kB (1 MiB leaves room to spare)
PLAN_GROUP_BYTES = 16  # `[prefix_len,[` and `]],` of a group of one


def request_seed(job_seed: int, line: int) -> int:
    """The sampling seed of a line without its own: fixed by the job seed and the line, so a
    resumed run samples each request exactly as an uninterrupted one would."""
    return ((job_seed & 0x7FFFFFFF) << 32) | ((line - 1) & 0xFFFFFFFF)


def sample_seed(seed: int, sample: int) -> int:
    """The seed of a line's sample `sample` (of n): the line's own seed for the first, so n = 1
    samples as before; a signed 64-bit hash of (seed, sample) for the others."""
    if sample == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


@dataclass
class Tokenized:
    """A job's requests (indices 0..n-1 in input order) and what the output needs of each.

    A line with n samples is n requests in a row, sample 0 first, all with its id and prompt.
    """

    requests: list[Request]
    kinds: bytearray  # [n] index into KINDS
    pending: bytearray  # [n] 1 = still to run, 0 = already in the output
    rejected: list[BadLine]  # pending lines the model cannot take (too long)
    samples: bytearray = field(default_factory=bytearray)  # [n] which sample of its line
    counts: bytearray = field(default_factory=bytearray)  # [n] how many samples its line has
    lines: array = field(default_factory=lambda: array("l"))  # [n] its line's 1-based input line


def tokenize_records(
    records: Iterable[tuple[InputRecord, bool]],
    tokenizer: Any,
    max_model_len: int,
    defaults: SamplingParams,
    job_seed: int,
    keep_done: bool,
    on_batch: Callable[[int, int], None] = lambda lines, tokens: None,
    default_n: int = 1,
) -> Tokenized:
    """Requests of (record, done) pairs; done records are tokenized only when `keep_done`
    (a saved plan names requests by their index in the whole job). `on_batch(lines, tokens)`
    after each batch: the lines and prompt tokens so far (progress on a long input).
    `default_n`: samples of a line that does not say (its `n`)."""
    out = Tokenized([], bytearray(), bytearray(), [])
    batch: list[tuple[InputRecord, bool]] = []
    lines = tokens = 0
    for rec, done in records:
        if done and not keep_done:
            continue
        batch.append((rec, done))
        if len(batch) >= TOKENIZE_BATCH:
            tokens += _tokenize_batch(batch, tokenizer, max_model_len, defaults, job_seed, default_n, out)
            lines += len(batch)
            on_batch(lines, tokens)
            batch = []
    tokens += _tokenize_batch(batch, tokenizer, max_model_len, defaults, job_seed, default_n, out)
    on_batch(lines + len(batch), tokens)
    return out


def tokenizing_progress(say: Callable[[str], None], every_s: float = PHASE_EVERY_S) -> Callable[[int, int], None]:
    """An on_batch for tokenize_records that tells `say` how far a long input got, at most
    once every `every_s` seconds (a short input says nothing)."""
    last = time.monotonic()

    def on_batch(lines: int, tokens: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            say(f"tokenizing: {lines:,} lines, {tokens:,} prompt tokens")

    return on_batch


def _tokenize_batch(batch, tokenizer, max_model_len, defaults, job_seed, default_n, out: Tokenized) -> int:  # type: ignore[no-untyped-def]
    """Tokenizes one batch into `out`; returns the prompt tokens of the requests it added."""
    tokens = 0
    texts = [rec.prompt for rec, _ in batch if rec.prompt is not None]
    encoded = iter(tokenizer.encode_batch(texts))
    vocab = getattr(tokenizer, "vocab_size", None)  # bounds logit_bias and stop_token_ids ids
    for rec, done in batch:
        try:
            ids = next(encoded) if rec.prompt is not None else tokenizer.encode_chat(list(rec.messages or ()))
        except InputError as exc:
            if not done:
                out.rejected.append(BadLine(rec.line, rec.id, "invalid_messages", str(exc), "messages", _is_openai(rec)))
            continue
        try:
            params = rec.sampling.apply(defaults)
        except FieldError as exc:  # the line's values and the job's defaults do not fit together
            if not done:
                out.rejected.append(BadLine(rec.line, rec.id, exc.code, str(exc), exc.param, _is_openai(rec)))
            continue
        if params.seed is None:
            params = replace(params, seed=request_seed(job_seed, rec.line))
        if params.logit_bias and vocab is not None and params.logit_bias[-1][0] >= vocab:
            if not done:
                message = f"logit_bias names token {params.logit_bias[-1][0]}, outside the vocabulary of {vocab} tokens"
                out.rejected.append(BadLine(rec.line, rec.id, "invalid_field", message, "logit_bias", _is_openai(rec)))
            continue
        if params.stop_token_ids and vocab is not None and params.stop_token_ids[-1] >= vocab:
            if not done:
                message = f"stop_token_ids names token {params.stop_token_ids[-1]}, outside the vocabulary of {vocab} tokens"
                out.rejected.append(BadLine(rec.line, rec.id, "invalid_field", message, "stop_token_ids", _is_openai(rec)))
            continue
        total = len(ids) + params.max_tokens
        if total > max_model_len:
            if not done:
                message = (
                    f"{len(ids)} prompt tokens + max_tokens {params.max_tokens} = {total} exceed the "
                    f"model's context of {max_model_len} tokens: shorten the prompt or lower max_tokens"
                )
                out.rejected.append(BadLine(rec.line, rec.id, "context_length_exceeded", message, None, _is_openai(rec)))
            continue
        prompt_ids = np.asarray(ids, dtype=np.int32)  # one array for all of the line's samples
        n = rec.n or default_n
        for k in range(n):
            sampled = params if k == 0 else replace(params, seed=sample_seed(params.seed, k))
            out.requests.append(Request(len(out.requests), rec.id, prompt_ids, sampled))
            out.kinds.append(KINDS.index(rec.kind))
            out.pending.append(0 if done else 1)
            out.samples.append(k)
            out.counts.append(n)
            out.lines.append(rec.line)
        tokens += len(ids)
    return tokens


def gather_samples(
    stream: Iterable[Completion], kinds: bytes, samples: bytes, counts: bytes, lines: Any
) -> Iterator[tuple[Kind, tuple[Completion, ...], int]]:
    """Each line's kind, Completions (in sample order) and input line, once its last sample
    finished.

    stream: Completions as they finish, indexed 0..m-1 as kinds/samples/counts/lines are (a
    line's samples have consecutive indices, sample 0 first). Only unfinished lines are held.
    """
    partial: dict[int, list[Completion]] = {}  # a line's finished samples, by its first request
    for completion in stream:
        i = completion.index
        if counts[i] == 1:
            yield KINDS[kinds[i]], (completion,), lines[i]
            continue
        first = i - samples[i]
        got = partial.setdefault(first, [])
        got.append(completion)
        if len(got) == counts[i]:
            del partial[first]
            yield KINDS[kinds[first]], tuple(sorted(got, key=lambda c: c.index)), lines[first]


def computing_members(plan: Any) -> dict[int, int]:
    """{request index: prefix tokens} of the request that computes each group's shared prefix:
    the group's first member (its prefill stores the prefix that the others read)."""
    return {g.members[0]: g.prefix_len for g in plan.groups if g.members and g.prefix_len}


def reused_only(stream: Iterable[Completion], computing: dict[int, int]) -> Iterator[Completion]:
    """`stream` with each Completion's shared_prefix_tokens counting only prompt tokens whose KV
    another request computed: a group's computing member reused none of its group's prefix."""
    for c in stream:
        own = computing.get(c.index)
        yield replace(c, shared_prefix_tokens=max(0, c.shared_prefix_tokens - own)) if own else c


def computing_of(shards: Iterable[Any]) -> dict[int, int]:
    """computing_members over the shards (or chunks) of a job, by job index: a group split
    between shards is computed once in each."""
    return {int(s.job_index[m]): p for s in shards for m, p in computing_members(s.plan).items()}


def _is_openai(rec: InputRecord) -> bool:
    return rec.kind.startswith("openai")


def check_plan(plan: Any, tokenized: Tokenized, config: Any) -> None:
    """PlanError unless `plan` was made for this job's requests (all of them, done ones too) and
    for the prefix settings of `config` (an EngineConfig)."""
    from batchllm_cli.planner.plan import PlanSettings

    # the KV pool size is not part of what a plan must match: any value checks it
    plan.validate(tokenized.requests, PlanSettings.from_engine(config, PlanSettings.num_kv_blocks))


def restrict_plan(plan: Any, tokenized: Tokenized) -> tuple[list[Request], Any]:
    """The pending requests (re-indexed 0..m-1) and `plan` (checked by check_plan) cut down to
    them, in the same order: what a resumed run with --plan executes."""
    return plan.restrict(tokenized.requests, tokenized.pending)


class EngineBackend:
    """io.job.Backend on batchllm_cli.engine.LLM."""

    def __init__(
        self,
        model: str | None,
        config: Any,  # EngineConfig
        defaults: SamplingParams,
        plan_path: Path | None = None,
        on_phase: Callable[[str], None] = lambda text: None,
        devices: list[str] | None = None,
        default_n: int = 1,
        ray: Any = None,  # a distributed.ray_job.RayCluster: run on its actors
    ) -> None:
        self.model = model
        self.ray = ray
        self.default_n = default_n
        self.extra_requests = 0  # samples beyond the first of each pending line (known after prepare)
        self.config = config
        self.devices = devices or [config.device]  # more than one: one engine per device
        self.defaults = defaults
        self.plan_path = plan_path
        self.on_phase = on_phase
        self.model_name = "unknown"
        self._tokenized: Tokenized | None = None
        self._tokenizer: Any = None  # handed to the engine: loaded once
        self._plan: Any = None  # the Plan read from plan_path

    def prepare(self, records: Iterator[tuple[InputRecord, bool]]) -> list[BadLine]:
        from batchllm_cli.engine.tokenizer import Tokenizer
        from batchllm_cli.models.loader import resolve_model

        if self.plan_path is not None:
            plan_size(self.plan_path)  # a missing file: before any work
        self.on_phase("reading the model's configuration")
        source = resolve_model(self.model)
        self.model_name = source.name
        tokenizer = self._tokenizer = Tokenizer.load(source.tokenizer_dir, source.tokenizer_gguf_file)
        self.on_phase("tokenizing")
        self._tokenized = tokenize_records(
            records, tokenizer, source.config.max_position, self.defaults, self.config.seed,
            keep_done=self.plan_path is not None, on_batch=tokenizing_progress(self.on_phase),
            default_n=self.default_n,
        )
        tok = self._tokenized
        self.extra_requests = sum(1 for k, p in zip(tok.samples, tok.pending) if p and k > 0)
        if self.plan_path is not None:
            self.on_phase("checking the plan")
            self._plan = read_plan(self.plan_path, len(tok.requests))
            check_plan(self._plan, self._tokenized, self.config)  # before the model loads
        return self._tokenized.rejected

    def run(self, on_progress: Callable[[Any], None]) -> Iterator[tuple[Kind, tuple[Completion, ...], int]]:
        assert self._tokenized is not None, "prepare() first"
        tok = self._tokenized
        # of the pending requests, by engine index: kind, sample number, samples of the line, line
        kinds, samples, counts = (bytes(x for x, p in zip(col, tok.pending) if p) for col in (tok.kinds, tok.samples, tok.counts))
        lines = array("l", (x for x, p in zip(tok.lines, tok.pending) if p))
        work = WorkLeft([r for r, p in zip(tok.requests, tok.pending) if p])  # what the ETA is made of
        progress = work.reporting(on_progress)
        if self.ray is not None:
            stream = self._stream_ray(tok, progress)
        elif len(self.devices) == 1:
            stream = self._stream(tok, progress)
        else:
            stream = self._stream_parallel(tok, progress)
        return gather_samples(work.tap(stream), kinds, samples, counts, lines)

    def _stream(self, tok: Tokenized, on_progress: Callable[[Any], None]) -> Iterator[Completion]:
        from batchllm_cli.engine.llm import LLM

        self.on_phase("loading the model")
        llm = LLM(self.model, config=self.config, tokenizer=self._tokenizer)
        if self._plan is not None:
            requests, plan = restrict_plan(self._plan, tok)
        else:
            requests = tok.requests
            self.on_phase("planning")
            plan = llm.plan(requests)
        self._tokenized = None  # the engine holds the requests from here
        running = "running"
        if llm.config.warmup:
            self.on_phase("warming up: compiling kernels, capturing CUDA graphs")
            running = f"running ({llm.warm_up(requests, plan).describe()})"
        self.on_phase(running)
        return reused_only(llm.stream(requests, plan=plan, on_progress=on_progress, warm=False), computing_members(plan))

    def _stream_parallel(self, tok: Tokenized, on_progress: Callable[[Any], None]) -> Iterator[Completion]:
        """One engine per device, each in its own process (engine/parallel.py)."""
        from batchllm_cli.engine.parallel import shard_plan, stream_parallel

        requests, plan = self._whole_plan(tok)
        shards = shard_plan(requests, plan, self.devices)
        self.on_phase(f"running on {len(shards)} devices ({', '.join(s.device for s in shards)})")
        return reused_only(stream_parallel(self.model, self.config, shards, on_progress), computing_of(shards))

    def _stream_ray(self, tok: Tokenized, on_progress: Callable[[Any], None]) -> Iterator[Completion]:
        """Chunks of whole prefix groups on the actors of a Ray cluster (distributed/ray_job.py)."""
        from batchllm_cli.distributed.ray_job import shard_chunks, stream_ray

        requests, plan = self._whole_plan(tok)
        sharding, chunks = shard_chunks(requests, plan, self.ray.workers)
        split = f", {sharding.split_groups} groups split to balance them" if sharding.split_groups else ""
        where = f"; dashboard {self.ray.dashboard_url}" if self.ray.dashboard_url else ""
        self.on_phase(f"running {len(chunks)} chunks of {len(sharding.shards)} shards{split} on Ray{where}")
        stream = stream_ray(self.ray, self.model, self.config, chunks, len(requests), on_progress)
        return reused_only(stream, computing_of(chunks))

    def _whole_plan(self, tok: Tokenized) -> tuple[list[Request], Any]:
        """The pending requests and their plan, made here once for engines elsewhere."""
        from batchllm_cli.planner import PlanSettings, build_plan

        if self._plan is not None:
            requests, plan = restrict_plan(self._plan, tok)
        else:
            requests = tok.requests
            self.on_phase("planning")
            # groups depend on the prefix settings only, not on the pool size
            plan = build_plan(requests, PlanSettings.from_engine(self.config, PlanSettings.num_kv_blocks))
        self._tokenized = None
        return requests, plan


def plan_size(path: Path) -> int:
    """The size of a plan file in bytes; PlanError when it cannot be read."""
    from batchllm_cli.errors import PlanError

    try:
        with open(path, "rb") as f:
            return os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise PlanError(f"cannot read the plan file {path}: {exc.strerror or exc}") from None


def max_plan_bytes(num_requests: int) -> int:
    """The largest plan file of a job of `num_requests`: each request's index appears at most twice
    (its group, and the report's top groups), a group costs a few bytes, the rest is fixed."""
    return PLAN_FIXED_BYTES + num_requests * (2 * (len(str(num_requests)) + 1) + PLAN_GROUP_BYTES)


def read_plan(path: Path, num_requests: int) -> Any:
    """The plan file written by `batchllm plan --json` for a job of `num_requests`; PlanError
    when it is not one. A file larger than such a plan can be is refused before it is parsed
    (parsing costs tens of times the file's size in memory)."""
    from batchllm_cli.errors import PlanError
    from batchllm_cli.planner.plan import Plan

    size, limit = plan_size(path), max_plan_bytes(num_requests)
    if size > limit:
        raise PlanError(f"the plan file {path} is {size:,} bytes, more than a plan of this job's "
                        f"{num_requests:,} requests can be ({limit:,}): it was made for another input")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PlanError(f"cannot read the plan file {path}: {exc.strerror or exc}") from None
    return Plan.from_json(data)
