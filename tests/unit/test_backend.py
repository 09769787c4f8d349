"""cli/backend.py without a model: records -> requests (seeds, kinds, context limit, done
records), and a saved plan checked against a job and cut down to what a resumed run has left."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import pytest

from batchllm_cli.cli.backend import KINDS, check_plan, request_seed, restrict_plan, tokenize_records
from batchllm_cli.engine.config import load_engine_config
from batchllm_cli.errors import InputError, PlanError
from batchllm_cli.io.fields import NO_OVERRIDES, SamplingOverrides
from batchllm_cli.io.reader import InputRecord
from batchllm_cli.planner import PlanSettings, build_plan
from batchllm_cli.planner.plan import check_groups
from batchllm_cli.types import SamplingParams

DEFAULTS = SamplingParams(max_tokens=4)


class WordTokenizer:
    """One token per word (id = word length + 100); chats need a non-empty system message."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [[100 + len(w) for w in t.split()] for t in texts]

    def encode_chat(self, messages: Sequence[dict]) -> list[int]:
        if messages[0]["role"] != "system":
            raise InputError("this model needs a system message")
        return self.encode_batch([" ".join(m["content"] for m in messages)])[0]


def _plain(line: int, text: str, sampling: SamplingOverrides = NO_OVERRIDES) -> InputRecord:
    return InputRecord(line, f"q{line}", "plain", text, None, sampling)


def _tokenize(records: list[tuple[InputRecord, bool]], max_len: int = 64, keep_done: bool = False):
    return tokenize_records(iter(records), WordTokenizer(), max_len, DEFAULTS, job_seed=5, keep_done=keep_done)


def test_requests_keep_input_order_kinds_and_line_seeds() -> None:
    chat = InputRecord(2, "c", "openai_chat", None, ({"role": "system", "content": "a bb"},), NO_OVERRIDES)
    own_seed = _plain(3, "x y", SamplingOverrides(seed=9, max_tokens=2))
    tok = _tokenize([(_plain(1, "one two three"), False), (chat, False), (own_seed, False)])
    assert [r.index for r in tok.requests] == [0, 1, 2]
    assert [r.id for r in tok.requests] == ["q1", "c", "q3"]
    assert [r.prompt_ids.tolist() for r in tok.requests] == [[103, 103, 105], [101, 102], [101, 101]]
    assert [KINDS[k] for k in tok.kinds] == ["plain", "openai_chat", "plain"]
    assert [r.sampling.seed for r in tok.requests] == [request_seed(5, 1), request_seed(5, 2), 9]
    assert tok.requests[2].sampling.max_tokens == 2 and tok.requests[0].sampling.max_tokens == 4
    assert list(tok.pending) == [1, 1, 1] and tok.rejected == []


def test_seeds_depend_on_job_seed_and_line_only() -> None:
    seeds = {request_seed(s, line) for s in (0, 1) for line in (1, 2, 3)}
    assert len(seeds) == 6 and request_seed(1, 2) == request_seed(1, 2)


def test_too_long_and_untokenizable_lines_are_rejected_unless_done() -> None:
    long = _plain(2, " ".join(["w"] * 61))  # 61 + max_tokens 4 > 64
    no_system = InputRecord(3, "u", "chat", None, ({"role": "user", "content": "hi"},), NO_OVERRIDES)
    done_long = _plain(4, " ".join(["w"] * 61))
    tok = _tokenize([(_plain(1, "ok"), False), (long, False), (no_system, False), (done_long, True)])
    assert [r.id for r in tok.requests] == ["q1"]
    assert [(b.line, b.code) for b in tok.rejected] == [(2, "context_length_exceeded"), (3, "invalid_messages")]
    assert "61 prompt tokens + max_tokens 4 = 65" in tok.rejected[0].message
    assert "system message" in tok.rejected[1].message


def test_done_records_are_skipped_or_kept_for_a_plan() -> None:
    records = [(_plain(i, f"w{i}"), i % 2 == 0) for i in range(1, 6)]
    assert [r.id for r in _tokenize(records).requests] == ["q1", "q3", "q5"]
    kept = _tokenize(records, keep_done=True)
    assert [r.id for r in kept.requests] == ["q1", "q2", "q3", "q4", "q5"]
    assert list(kept.pending) == [1, 0, 1, 0, 1]


def test_progress_after_each_batch_counts_lines_and_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    import batchllm_cli.cli.backend as backend

    monkeypatch.setattr(backend, "TOKENIZE_BATCH", 4)
    seen: list[tuple[int, int]] = []
    records = [(_plain(i, "a b c"), False) for i in range(1, 11)]
    tok = tokenize_records(iter(records), WordTokenizer(), 64, DEFAULTS, job_seed=5, keep_done=False,
                           on_batch=lambda lines, tokens: seen.append((lines, tokens)))
    assert seen == [(4, 12), (8, 24), (10, 30)]  # two whole batches, then the rest
    assert len(tok.requests) == 10


def _job(done: set[int]) -> Any:
    """Three prompts on each of two shared 20-word prefixes; lines in `done` are finished."""
    prefixes = [" ".join(["alpha"] * 20), " ".join(["beta"] * 20)]
    records = [(_plain(i + 1, f"{prefixes[i % 2]} question {i}"), i + 1 in done) for i in range(6)]
    return _tokenize(records, keep_done=True)


def test_a_plan_is_checked_against_the_job_and_the_prefix_settings() -> None:
    config = load_engine_config("cpu")
    tok = _job(set())
    plan = build_plan(tok.requests, PlanSettings.from_engine(config, 64))
    check_plan(plan, tok, config)  # the same job and settings: accepted
    with pytest.raises(PlanError, match="does not belong"):
        check_plan(plan, replace(tok, requests=tok.requests[:-1]), config)
    with pytest.raises(PlanError, match="other prefix settings"):
        check_plan(plan, tok, load_engine_config("cpu", prefix_sharing=False))


def test_restrict_plan_keeps_the_order_of_what_is_left() -> None:
    config = load_engine_config("cpu")
    tok = _job(done={1, 2, 5})  # left: lines 3, 4, 6 = job requests 2, 3, 5
    plan = build_plan(tok.requests, PlanSettings.from_engine(config, 64))
    assert len(plan.groups) == 2 and all(g.prefix_len > 0 for g in plan.groups)
    requests, sub = restrict_plan(plan, tok)
    assert [r.index for r in requests] == [0, 1, 2] and [r.id for r in requests] == ["q3", "q4", "q6"]
    old_of_new = {0: 2, 1: 3, 2: 5}
    expected = [tuple(m for m in g.members if m in old_of_new.values()) for g in plan.groups]
    assert [tuple(old_of_new[m] for m in g.members) for g in sub.groups] == [e for e in expected if e]
    alone = [g for g in sub.groups if len(g.members) == 1]
    assert alone and all(g.prefix_len == 0 for g in alone)  # one member shares with nobody
    check_groups(sub.groups, requests)  # the cut plan keeps the Plan invariants


def test_tokenizing_progress_speaks_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    import batchllm_cli.cli.backend as backend

    clock = iter([0.0, 3.0, 11.0, 12.0, 25.0])  # creation, then one reading per call
    monkeypatch.setattr(backend.time, "monotonic", lambda: next(clock))
    said: list[str] = []
    on_batch = backend.tokenizing_progress(said.append, every_s=10.0)
    for lines in (512, 1024, 1536, 2048):
        on_batch(lines, lines * 100)
    assert said == ["tokenizing: 1,024 lines, 102,400 prompt tokens", "tokenizing: 2,048 lines, 204,800 prompt tokens"]


# --- n samples of a line -------------------------------------------------------------------------


def test_a_line_with_n_becomes_n_requests_with_their_own_seeds() -> None:
    from batchllm_cli.cli.backend import sample_seed

    three = replace(_plain(2, "a bb ccc"), n=3)
    tok = tokenize_records(iter([(_plain(1, "x"), False), (three, True), (_plain(3, "y z"), False)]), WordTokenizer(),
                           64, DEFAULTS, job_seed=5, keep_done=True, default_n=2)
    assert [r.id for r in tok.requests] == ["q1", "q1", "q2", "q2", "q2", "q3", "q3"]
    assert list(tok.samples) == [0, 1, 0, 1, 2, 0, 1] and list(tok.counts) == [2, 2, 3, 3, 3, 2, 2]
    assert list(tok.pending) == [1, 1, 0, 0, 0, 1, 1]  # a done line: all of its samples
    line2 = tok.requests[2:5]
    assert all(r.prompt_ids is line2[0].prompt_ids for r in line2)  # one array, not three copies
    seeds = [r.sampling.seed for r in line2]
    assert seeds[0] == request_seed(5, 2) and seeds[1:] == [sample_seed(seeds[0], 1), sample_seed(seeds[0], 2)]
    assert len({r.sampling.seed for r in tok.requests}) == 7
    assert all(-(2**63) <= s < 2**63 for s in seeds)


def test_samples_are_gathered_into_one_answer_per_line_in_sample_order() -> None:
    from batchllm_cli.cli.backend import gather_samples
    from batchllm_cli.types import Completion

    def done(i: int) -> Completion:
        return Completion(i, f"id{i}", f"t{i}", (i,), "stop", 3, 0)

    kinds, samples, counts = bytes([0, 0, 0, 2, 1, 1]), bytes([0, 1, 2, 0, 0, 1]), bytes([3, 3, 3, 1, 2, 2])
    order = [2, 3, 5, 0, 4, 1]  # finishing order
    lines = [1, 1, 1, 3, 4, 4]
    out = list(gather_samples((done(i) for i in order), kinds, samples, counts, lines))
    assert [(kind, [c.index for c in cs], line) for kind, cs, line in out] == [
        ("openai_chat", [3], 3), ("chat", [4, 5], 4), ("plain", [0, 1, 2], 1)]


def test_a_logit_bias_outside_the_vocabulary_is_a_bad_line() -> None:
    class Sized(WordTokenizer):
        vocab_size = 200

    inside = _plain(1, "a b", SamplingOverrides(logit_bias=((199, 1.0),)))
    outside = _plain(2, "a b", SamplingOverrides(logit_bias=((3, 1.0), (200, -5.0))))
    tok = tokenize_records(iter([(inside, False), (outside, False)]), Sized(), 64, DEFAULTS, job_seed=5, keep_done=False)
    assert [r.id for r in tok.requests] == ["q1"]
    [bad] = tok.rejected
    assert (bad.line, bad.param, bad.code) == (2, "logit_bias", "invalid_field") and "200" in bad.message


def test_a_plan_far_too_big_for_the_job_is_refused_before_parsing(tmp_path) -> None:
    """A 44 MB plan for a job of 600 requests: refused from its size, without the ~40x its size
    that parsing would take; a real plan of the job stays under the bound."""
    import tracemalloc

    from batchllm_cli.cli.backend import max_plan_bytes, read_plan

    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.write(b'{"version": 1, "groups": [')
        f.write(b"[0, [1]], " * 4_400_000)
        f.write(b"[0, [1]]]}")
    assert big.stat().st_size > 44_000_000
    tracemalloc.start()
    try:
        with pytest.raises(PlanError, match="more than a plan of this job's 600 requests"):
            read_plan(big, 600)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
    prefix = " ".join(["alpha"] * 20)
    requests = _tokenize([(_plain(i + 1, f"{prefix} {'q' * (i % 7 + 1)} {i}"), False) for i in range(600)]).requests
    plan = build_plan(requests, PlanSettings())
    assert len(plan.to_json()) < max_plan_bytes(len(requests))
    small = tmp_path / "plan.json"
    small.write_bytes(plan.to_json())
    assert read_plan(small, len(requests)).fingerprint == plan.fingerprint
