"""Output lines as pipelines read them: every OpenAI line checked against the openai SDK's own
types and against vLLM's BatchRequestOutput (rebuilt here from vllm/entrypoints/openai/
run_batch.py: vLLM itself is too heavy for the tests), with and without --errors; vLLM's
run-batch test inputs; --ordered (bounded window, spill, resume); cached_tokens."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
from pydantic import BaseModel, ConfigDict

openai = pytest.importorskip("openai")
from openai.types import BatchError, Completion as SDKCompletion  # noqa: E402
from openai.types.chat import ChatCompletion  # noqa: E402
from openai.types.shared import ErrorObject  # noqa: E402

from batchllm_cli.cli.backend import computing_members, reused_only  # noqa: E402
from batchllm_cli.io.echo import EchoBackend  # noqa: E402
from batchllm_cli.io.job import run_job  # noqa: E402
from batchllm_cli.io.sinks import InOrder  # noqa: E402
from batchllm_cli.types import Completion  # noqa: E402
from io_helpers import CHAT, job_options, jsonl, read_records  # noqa: E402

CHAT_URL, COMPLETIONS_URL = "/v1/chat/completions", "/v1/completions"


# --- the two consumers' shapes -----------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchResponse(_Strict):
    """A batch output line's response, as OpenAI's Batch API guide shows it."""
    status_code: int
    request_id: str
    body: Optional[dict[str, Any]]


class BatchOutputLine(_Strict):
    """An OpenAI batch output (or error file) line: custom_id null only for a line that had none."""
    id: str
    custom_id: Optional[str | int]
    response: Optional[BatchResponse]
    error: Optional[dict[str, Any]]


class VllmBatchResponseData(BaseModel):
    """vLLM's BatchResponseData (run_batch.py): status_code, request_id, body or None."""
    status_code: int = 200
    request_id: str
    body: Optional[ChatCompletion | SDKCompletion] = None


class VllmBatchRequestOutput(BaseModel):
    """vLLM's BatchRequestOutput (run_batch.py): custom_id is a required string there."""
    id: str
    custom_id: str
    response: Optional[VllmBatchResponseData]
    error: Optional[Any]


def _no_extras(model: Any, where: str = "") -> None:
    """The SDK's models allow unknown fields: fail on any, recursively (a strict check)."""
    if isinstance(model, BaseModel):
        assert not model.model_extra, f"{where}: unknown fields {sorted(model.model_extra)}"
        for name in type(model).model_fields:
            _no_extras(getattr(model, name), f"{where}.{name}")
    elif isinstance(model, list):
        for i, item in enumerate(model):
            _no_extras(item, f"{where}[{i}]")


def check_openai_line(rec: dict[str, Any], url_of: dict[Any, str]) -> str:
    """Validates one output line with the SDK's types; returns what it is."""
    line = BatchOutputLine.model_validate(rec)
    if line.response is not None and line.response.status_code == 200:
        assert line.error is None
        sdk = ChatCompletion if url_of[line.custom_id] == CHAT_URL else SDKCompletion
        _no_extras(sdk.model_validate(line.response.body), "body")
        return "success"
    if line.error is not None:  # failed, in OUTPUT (vLLM's shape) or without a custom_id
        _no_extras(BatchError.model_validate(line.error), "error")
        assert line.response is None or line.response.body is None
        return "failure"
    assert line.response is not None and line.response.body is not None  # the --errors file's shape
    _no_extras(ErrorObject.model_validate(line.response.body["error"]), "body.error")
    return "failure"


def chat(cid: Any, **body: Any) -> dict[str, Any]:
    return {"custom_id": cid, "method": "POST", "url": CHAT_URL, "body": {"model": "m", "messages": CHAT, **body}}


def completion(cid: Any, **body: Any) -> dict[str, Any]:
    return {"custom_id": cid, "method": "POST", "url": COMPLETIONS_URL, "body": {"model": "m", "prompt": "a b", **body}}


MIXED = [
    chat("ok-chat"),
    completion("ok-cmpl", logprobs=0),
    chat("n2", n=2),
    chat("hot", temperature=3.0),  # over OpenAI's 2
    {**chat("url"), "url": "/bad_url"},
    chat("stream", stream="True"),
    chat("other-model", model="gpt-4o"),  # 404 with served names
    b"{this is not json",
    {"method": "POST", "url": CHAT_URL, "body": {"model": "m", "messages": CHAT}},  # no custom_id
]
URLS = {"ok-chat": CHAT_URL, "ok-cmpl": COMPLETIONS_URL, "n2": CHAT_URL}


@pytest.mark.parametrize("split", [False, True], ids=["one-file", "errors-file"])
def test_every_openai_output_line_validates_as_both_consumers_read_it(tmp_path: Path, split: bool) -> None:
    inp = jsonl(tmp_path / "in.jsonl", MIXED)
    out, err = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    opts = job_options(inp, out, errors_path=err if split else None, served_models=frozenset({"m"}))
    summary = run_job(opts, EchoBackend)
    recs = read_records(out) + (read_records(err) if split else [])
    assert len(recs) == len(MIXED) and summary.bad_lines == 6
    kinds = {rec["custom_id"] if rec["custom_id"] is not None else f"line {rec['error']['line']}":
             check_openai_line(rec, URLS) for rec in recs}
    assert kinds == {"ok-chat": "success", "ok-cmpl": "success", "n2": "success", "hot": "failure",
                     "url": "failure", "stream": "failure", "other-model": "failure", "line 8": "failure",
                     "line 9": "failure"}
    if split:  # OUTPUT holds the successes only, the errors file every failure
        assert {r["custom_id"] for r in read_records(out)} == {"ok-chat", "ok-cmpl", "n2"}
    by_id = {r["custom_id"]: r for r in recs}
    assert by_id["other-model"]["response"]["status_code"] == 404
    assert by_id["ok-chat"]["response"]["body"]["model"] == "m"  # the served name answers
    # completion logprobs: the sampled token is in top_logprobs even with logprobs 0
    lp = by_id["ok-cmpl"]["response"]["body"]["choices"][0]["logprobs"]
    assert lp is None or all(tok in top for tok, top in zip(lp["tokens"], lp["top_logprobs"]))

    for rec in recs:
        ok = rec["response"] is not None and rec["response"]["status_code"] == 200  # OpenAI's consumer
        assert ok == (rec["custom_id"] in URLS)
        if rec["custom_id"] is None:
            continue  # vLLM stops the whole run on such a line (custom_id is a required str there)
        if split and not ok:
            continue  # the errors file is OpenAI's error-file shape (an error body), not vLLM's
        VllmBatchRequestOutput.model_validate(rec)
        if not split:  # vLLM's consumer: error None <=> a body with choices
            assert (rec["error"] is None) == (rec["response"]["body"] is not None and "choices" in rec["response"]["body"])


# vLLM's tests/entrypoints/openai/test_run_batch.py inputs (INPUT_BATCH and INVALID_INPUT_BATCH)
VLLM_MODEL = "hmellor/tiny-random-LlamaForCausalLM"
SYSTEM_HELLO = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hello world!"}]
VLLM_INPUT = [
    {"custom_id": "request-1", "method": "POST", "url": CHAT_URL, "body": {"model": VLLM_MODEL, "messages": SYSTEM_HELLO, "max_tokens": 1000}},
    {"custom_id": "request-2", "method": "POST", "url": CHAT_URL, "body": {"model": VLLM_MODEL, "messages": SYSTEM_HELLO, "max_tokens": 1000}},
    {"custom_id": "request-3", "method": "POST", "url": CHAT_URL, "body": {"model": "NonExistModel", "messages": SYSTEM_HELLO, "max_tokens": 1000}},
    {"custom_id": "request-4", "method": "POST", "url": "/bad_url", "body": {"model": VLLM_MODEL, "messages": SYSTEM_HELLO, "max_tokens": 1000}},
    {"custom_id": "request-5", "method": "POST", "url": CHAT_URL, "body": {"stream": "True", "model": VLLM_MODEL, "messages": SYSTEM_HELLO, "max_tokens": 1000}},
]
VLLM_INVALID = [
    {"invalid_field": "request-1", "method": "POST", "url": CHAT_URL, "body": {"model": VLLM_MODEL, "messages": SYSTEM_HELLO, "max_tokens": 1000}},
    {"custom_id": "request-2", "method": "POST", "url": CHAT_URL, "body": {"model": VLLM_MODEL, "messages": SYSTEM_HELLO, "max_tokens": 1000}},
]


def test_vllm_run_batch_inputs_get_vllms_statuses(tmp_path: Path) -> None:
    """With the model served under vLLM's name: 200, 200, 404, 400, 400 as vLLM answers."""
    inp = jsonl(tmp_path / "in.jsonl", VLLM_INPUT)
    out = tmp_path / "out.jsonl"
    run_job(job_options(inp, out, served_models=frozenset({VLLM_MODEL})), EchoBackend)
    status = {r["custom_id"]: r["response"]["status_code"] for r in read_records(out)}
    assert status == {"request-1": 200, "request-2": 200, "request-3": 404, "request-4": 400, "request-5": 400}
    for rec in read_records(out):
        VllmBatchRequestOutput.model_validate(rec)


def test_vllms_invalid_batch_is_answered_line_by_line(tmp_path: Path) -> None:
    """vLLM exits non-zero on a line without custom_id and writes nothing; batchllm answers the
    other lines and gives that one an envelope with custom_id null (README: where it differs)."""
    inp = jsonl(tmp_path / "in.jsonl", VLLM_INVALID)
    out = tmp_path / "out.jsonl"
    summary = run_job(job_options(inp, out), EchoBackend)
    recs = {r["custom_id"]: r for r in read_records(out)}
    assert summary.bad_lines == 1 and recs["request-2"]["response"]["status_code"] == 200
    assert (recs[None]["error"]["code"], recs[None]["error"]["line"]) == ("invalid_field", 1)


# --- --errors resume ---------------------------------------------------------------------------

class Crash(RuntimeError):
    pass


class Shuffled(EchoBackend):
    """Answers in a shuffled order (as group scheduling does) and can die after k answers."""

    def __init__(self, seed: int = 0, die_after: int | None = None) -> None:
        super().__init__()
        self.seed, self.die_after = seed, die_after

    def run(self, on_progress: Any) -> Iterator[Any]:
        items = list(super().run(on_progress))
        random.Random(self.seed).shuffle(items)
        for k, item in enumerate(items):
            if self.die_after is not None and k == self.die_after:
                raise Crash("killed")
            yield item


def test_errors_file_resumes_with_the_output(tmp_path: Path) -> None:
    lines = [chat(f"c{i}") if i % 3 else chat(f"c{i}", temperature=9.0) for i in range(30)]
    inp = jsonl(tmp_path / "in.jsonl", lines)
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    opts = job_options(inp, out, errors_path=err)
    with pytest.raises(Crash):
        run_job(opts, lambda: Shuffled(die_after=7))
    assert len(read_records(err)) == 10 and len(read_records(out)) == 7
    run_job(opts, Shuffled)
    ok = [r["custom_id"] for r in read_records(out)]
    bad = [r["custom_id"] for r in read_records(err)]
    assert sorted(ok + bad) == sorted(f"c{i}" for i in range(30)) and len(set(ok + bad)) == 30
    assert set(bad) == {f"c{i}" for i in range(0, 30, 3)}


# --- --ordered ---------------------------------------------------------------------------------

def test_in_order_releases_in_line_order_in_a_bounded_window() -> None:
    lines = [n for n in range(1, 400) if n % 7]  # some lines have no record (blank or done)
    order = InOrder(iter(lines), window=5, bucket_lines=16)
    shuffled = lines[:]
    random.Random(3).shuffle(shuffled)
    released, most_held = [], 0
    for taken, n in enumerate(shuffled, 1):
        released += [rec["n"] for _, rec in order.add(n, False, {"n": n})]
        assert order.held == taken - len(released)  # what a stopped job has not written
        most_held = max(most_held, order.held)
    assert released == lines and order.spilled > 0 and order.held == 0 and most_held > 5
    assert list(order.leftovers()) == []
    order.close()


def test_ordered_output_is_in_input_order_and_resumes_after_a_crash(tmp_path: Path) -> None:
    lines = [{"id": f"q{i}", "prompt": f"p {i}"} if i != 5 else b"{bad" for i in range(40)]
    inp = jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    opts = job_options(inp, out, ordered=True)
    with pytest.raises(Crash):
        run_job(opts, lambda: Shuffled(seed=1, die_after=25))
    first = [r.get("id") for r in read_records(out)]
    want = [f"q{i}" if i != 5 else None for i in range(40)]  # the bad line: its error record (id null)
    assert first == want[: len(first)]  # a prefix in input order (held records are lost)
    run_job(opts, lambda: Shuffled(seed=2))
    assert [r.get("id") for r in read_records(out)] == want


def test_unordered_output_follows_completion_order(tmp_path: Path) -> None:
    """The test above could pass by chance only if Shuffled kept the order: it does not."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": f"q{i}", "prompt": "p"} for i in range(40)])
    out = tmp_path / "out.jsonl"
    run_job(job_options(inp, out), lambda: Shuffled(seed=2))
    assert [r["id"] for r in read_records(out)] != [f"q{i}" for i in range(40)]


# --- cached_tokens -----------------------------------------------------------------------------

def test_a_groups_first_member_reused_none_of_its_prefix() -> None:
    from batchllm_cli.planner.plan import PrefixGroup

    class FakePlan:
        groups = (PrefixGroup(10, (3, 1, 2)), PrefixGroup(0, (0,)))

    def done(i: int, shared: int) -> Completion:
        return Completion(i, f"r{i}", "t", (1,), "stop", 12, shared)

    computing = computing_members(FakePlan())
    assert computing == {3: 10}
    out = {c.index: c.shared_prefix_tokens for c in reused_only([done(1, 10), done(3, 10), done(2, 10), done(0, 0)], computing)}
    assert out == {1: 10, 3: 0, 2: 10, 0: 0}  # summed: the prefix counted once per reuse, never for its computation


def test_record_sink_counts_what_it_has_not_written() -> None:
    """A stopped job reports the records in its output: not the failures held back until the
    first answer, nor --ordered records waiting for an earlier line."""
    from batchllm_cli.io.sinks import RecordSink

    class Collect:
        def __init__(self) -> None:
            self.records: list[dict] = []

        def write(self, record: dict) -> None:
            self.records.append(record)

    out = Collect()
    sink = RecordSink(out, order=InOrder(iter([1, 2, 3])))
    sink.write(1, {"n": 1}, failure=True)  # a bad line: held until the first answer
    sink.write(3, {"n": 3}, failure=False)  # waits for line 2
    assert sink.held == 2 and out.records == []
    sink.write(2, {"n": 2}, failure=False)
    assert sink.held == 0 and [r["n"] for r in out.records] == [1, 2, 3]
