"""Output line shapes: OpenAI batch output lines (200 and 400), plain records, stable ids."""

from __future__ import annotations

from pathlib import Path

from batchllm_cli.io.formats import completion_record
from batchllm_cli.types import Completion
from io_helpers import CHAT, job_options, jsonl, read_records, record_name, run_echo

def test_openai_output_line_shapes(tmp_path: Path) -> None:
    """OpenAI batch lines are answered in the batch output format: custom_id, a status-200
    response whose body is a chat.completion / text_completion, or a 400 with an error body."""
    inp = jsonl(tmp_path / "in.jsonl", [
        {"custom_id": "chat-1", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "messages": CHAT, "max_completion_tokens": 5}},
        {"custom_id": "cmpl-1", "method": "POST", "url": "/v1/completions", "body": {"model": "m", "prompt": "a b c"}},
        {"custom_id": "bad-1", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": CHAT, "n": 2}},
        {"custom_id": "", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}},
    ])
    out = tmp_path / "out.jsonl"
    run_echo(job_options(inp, out))
    recs = {record_name(r): r for r in read_records(out)}
    assert sorted(recs) == ["bad-1", "chat-1", "cmpl-1", "line 4"]

    chat = recs["chat-1"]
    assert chat["custom_id"] == "chat-1" and chat["error"] is None
    assert chat["id"].startswith("batch_req_") and chat["response"]["request_id"].startswith("req_")
    assert chat["response"]["status_code"] == 200
    body = chat["response"]["body"]
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "echo"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "hello chat"},
                                "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4,
                             "prompt_tokens_details": {"cached_tokens": 0}}

    cmpl = recs["cmpl-1"]["response"]
    assert cmpl["status_code"] == 200
    assert cmpl["body"]["object"] == "text_completion" and cmpl["body"]["id"].startswith("cmpl-")
    assert cmpl["body"]["choices"][0]["text"] == "a b c"
    assert cmpl["body"]["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}

    bad = recs["bad-1"]
    assert bad["custom_id"] == "bad-1" and bad["response"]["status_code"] == 400
    assert bad["response"]["body"]["error"]["type"] == "invalid_request_error"
    assert (bad["response"]["body"]["error"]["code"], bad["response"]["body"]["error"]["param"]) == (
        "unsupported_field", "n")

    nameless = recs["line 4"]  # no custom_id to answer by: a plain error record
    assert (nameless["id"], nameless["line"], nameless["error"]["code"]) == (None, 4, "invalid_field")


def test_openai_usage_counts_shared_prefix_as_cached_and_ids_are_stable() -> None:
    """cached_tokens is the shared-prefix count; the object ids depend only on the job and the
    custom_id, so a resumed run names a request as the first run did."""
    c = Completion(0, "req-1", "out", (1, 2, 3), "length", 10, 6)
    rec = completion_record("openai_chat", c, "m", "tag1")
    usage = rec["response"]["body"]["usage"]
    assert usage == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
                     "prompt_tokens_details": {"cached_tokens": 6}}
    assert rec["response"]["body"]["choices"][0]["finish_reason"] == "length"
    again = completion_record("openai_chat", c, "m", "tag1")
    assert (again["id"], again["response"]["request_id"], again["response"]["body"]["id"]) == (
        rec["id"], rec["response"]["request_id"], rec["response"]["body"]["id"])
    other_job = completion_record("openai_chat", c, "m", "tag2")
    other_req = completion_record("openai_chat", Completion(0, "req-2", "out", (1,), "stop", 1, 0), "m", "tag1")
    assert len({rec["id"], other_job["id"], other_req["id"]}) == 3
    plain = completion_record("plain", c, "m", "tag1")
    assert plain == {"id": "req-1", "text": "out", "finish_reason": "length",
                     "usage": {"prompt_tokens": 10, "completion_tokens": 3, "shared_prefix_tokens": 6}}
