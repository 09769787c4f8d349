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
        {"custom_id": "bad-1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": CHAT, "best_of": 2}},
        {"custom_id": "", "method": "POST", "url": "/v1/completions", "body": {"model": "m", "prompt": "x"}},
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

    bad = recs["bad-1"]  # one output file: vLLM's failure shape (body null, error set)
    assert bad["custom_id"] == "bad-1" and bad["response"]["status_code"] == 400
    assert bad["response"]["body"] is None and bad["id"].startswith("batch_req_")
    assert (bad["error"]["code"], bad["error"]["param"], bad["error"]["line"]) == ("unsupported_field", "best_of", 3)

    nameless = recs["line 4"]  # no custom_id to answer by: still an envelope, custom_id null
    assert nameless["custom_id"] is None and nameless["id"].startswith("batch_req_")
    assert (nameless["error"]["line"], nameless["error"]["code"]) == (4, "invalid_field")


def test_openai_usage_counts_shared_prefix_as_cached_and_ids_are_stable() -> None:
    """cached_tokens is the shared-prefix count; the object ids depend only on the job and the
    custom_id, so a resumed run names a request as the first run did."""
    c = Completion(0, "req-1", "out", (1, 2, 3), "length", 10, 6)
    rec = completion_record("openai_chat", (c,), "m", "tag1")
    usage = rec["response"]["body"]["usage"]
    assert usage == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
                     "prompt_tokens_details": {"cached_tokens": 6}}
    assert rec["response"]["body"]["choices"][0]["finish_reason"] == "length"
    again = completion_record("openai_chat", (c,), "m", "tag1")
    assert (again["id"], again["response"]["request_id"], again["response"]["body"]["id"]) == (
        rec["id"], rec["response"]["request_id"], rec["response"]["body"]["id"])
    other_job = completion_record("openai_chat", (c,), "m", "tag2")
    other_req = completion_record("openai_chat", (Completion(0, "req-2", "out", (1,), "stop", 1, 0),), "m", "tag1")
    assert len({rec["id"], other_job["id"], other_req["id"]}) == 3
    plain = completion_record("plain", (c,), "m", "tag1")
    assert plain == {"id": "req-1", "text": "out", "finish_reason": "length",
                     "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13, "shared_prefix_tokens": 6}}


def test_logprobs_in_each_output_shape() -> None:
    """Plain records list token, token_id, logprob and top_logprobs; chat.completion bodies carry
    OpenAI's logprobs.content with bytes; text_completion bodies its parallel lists."""
    from batchllm_cli.types import TokenLogprob, TopLogprob

    lps = (
        TokenLogprob(7, -0.25, (TopLogprob(7, -0.25, " Pa"), TopLogprob(9, -1.5, " Lo")), " Pa"),
        TokenLogprob(8, -0.5, (TopLogprob(8, -0.5, "ris"), TopLogprob(3, -2.0, "é")), "ris"),
    )
    c = Completion(0, "q", " Paris", (7, 8), "length", 4, 0, lps)
    plain = completion_record("plain", (c,), "m", "t")["logprobs"]
    assert plain[0] == {"token": " Pa", "token_id": 7, "logprob": -0.25, "top_logprobs": [
        {"token": " Pa", "token_id": 7, "logprob": -0.25}, {"token": " Lo", "token_id": 9, "logprob": -1.5}]}
    assert [e["token_id"] for e in plain] == [7, 8]

    chat = completion_record("openai_chat", (c,), "m", "t")["response"]["body"]["choices"][0]["logprobs"]
    assert chat["content"][1]["token"] == "ris" and chat["content"][1]["bytes"] == [114, 105, 115]
    assert chat["content"][1]["top_logprobs"][1] == {"token": "é", "logprob": -2.0, "bytes": [195, 169]}

    cmpl = completion_record("openai_completion", (c,), "m", "t")["response"]["body"]["choices"][0]["logprobs"]
    assert cmpl == {"tokens": [" Pa", "ris"], "token_logprobs": [-0.25, -0.5],
                    "top_logprobs": [{" Pa": -0.25, " Lo": -1.5}, {"ris": -0.5, "é": -2.0}], "text_offset": [0, 3]}

    without = Completion(0, "q", " Paris", (7, 8), "length", 4, 0)
    assert "logprobs" not in completion_record("plain", (without,), "m", "t")


def test_a_line_with_n_samples_answers_with_choices() -> None:
    """n samples: plain records list choices (index, text, finish_reason); OpenAI bodies have n
    choices; usage counts the prompt once and every sample's output tokens."""
    a = Completion(3, "q", "one", (1,), "stop", 5, 4)
    b = Completion(4, "q", "two two", (2, 2), "length", 5, 4)
    plain = completion_record("chat", (a, b), "m", "t")
    assert plain == {"id": "q", "choices": [{"index": 0, "text": "one", "finish_reason": "stop"},
                                            {"index": 1, "text": "two two", "finish_reason": "length"}],
                     "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "shared_prefix_tokens": 4}}
    body = completion_record("openai_completion", (a, b), "m", "t")["response"]["body"]
    assert [(ch["index"], ch["text"]) for ch in body["choices"]] == [(0, "one"), (1, "two two")]
    assert body["usage"]["total_tokens"] == 8 and body["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    chat = completion_record("openai_chat", (a, b), "m", "t")["response"]["body"]["choices"]
    assert [ch["message"]["content"] for ch in chat] == ["one", "two two"]
