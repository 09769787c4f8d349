"""Output line shapes: plain result lines, error records, and OpenAI batch output lines.

Plain input -> {"id", "text", "finish_reason", "usage": {prompt_tokens, completion_tokens,
total_tokens, shared_prefix_tokens}}; a bad line -> {"id", "line", "error": {"code", "message"}}.
Every line of an OpenAI batch file -> a batch envelope {"id", "custom_id", "response", "error"}:
- success: response {"status_code": 200, "request_id", "body"}, the body shaped as the
  endpoint's own response (chat.completion or text_completion, usage.prompt_tokens_details.
  cached_tokens = prompt tokens another request computed), error null;
- a failure in the one output file (vLLM's run-batch shape): response {"status_code" 400/404,
  "request_id", "body": null}, error {"code", "message", "param", "line"} (OpenAI's BatchError
  fields), so that `error is None` and `status_code == 200` both tell successes apart;
- a failure in the --errors file (OpenAI's error-file shape): response {"status_code",
  "request_id", "body": {"error": {message, type, param, code}}}, error null; a line without a
  usable custom_id (custom_id null) has no request to answer: response null, error set.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Literal, Sequence

import orjson

from batchllm_cli.io.index import key_of
from batchllm_cli.io.reader import BadLine, Kind
from batchllm_cli.types import Completion, TokenLogprob


ErrorStyle = Literal["inline", "error_file"]  # a failure's envelope: in OUTPUT, or in --errors


def _ident(job_tag: str, prefix: str, custom_id: str | int | None, length: int = 24, line: int = 0) -> str:
    """A stable id for an OpenAI object: the same job and request give the same id on resume."""
    name = custom_id if isinstance(custom_id, str) else f"\x00int:{custom_id}" if custom_id is not None else f"\x00line:{line}"
    digest = hashlib.sha256(f"{job_tag}\x00{prefix}\x00{name}".encode()).hexdigest()
    return f"{prefix}{digest[:length]}"


def dumps_line(obj: dict[str, Any]) -> bytes:
    """One output line with its newline: compact JSON, non-ASCII kept as UTF-8."""
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)


def completion_record(kind: Kind, completions: Sequence[Completion], model: str, job_tag: str) -> dict[str, Any]:
    """The output record of a finished line: its one Completion, or its n samples in order."""
    first = completions[0]
    if kind in ("plain", "chat"):
        if len(completions) == 1:
            record: dict[str, Any] = {"id": first.id, **_plain_choice(first)}
        else:
            record = {"id": first.id, "choices": [{"index": k, **_plain_choice(c)} for k, c in enumerate(completions)]}
        output_tokens = sum(c.completion_tokens for c in completions)
        record["usage"] = {
            "prompt_tokens": first.prompt_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": first.prompt_tokens + output_tokens,
            "shared_prefix_tokens": _reused(completions),
        }
        return record
    output_tokens = sum(c.completion_tokens for c in completions)
    usage = {
        "prompt_tokens": first.prompt_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": first.prompt_tokens + output_tokens,
        "prompt_tokens_details": {"cached_tokens": _reused(completions)},
    }
    chat = kind == "openai_chat"
    prefix, obj = ("chatcmpl-", "chat.completion") if chat else ("cmpl-", "text_completion")
    body = {"id": _ident(job_tag, prefix, first.id), "object": obj, "created": int(time.time()), "model": model,
            "choices": [_openai_choice(chat, k, c) for k, c in enumerate(completions)], "usage": usage}
    return _openai_envelope(job_tag, first.id, 200, body)


def _reused(completions: Sequence[Completion]) -> int:
    """Prompt tokens of a line whose KV another line's request computed: the least over its
    samples (when one sample computed the shared prefix, the line computed it)."""
    return min(c.shared_prefix_tokens for c in completions)


def _openai_choice(chat: bool, index: int, c: Completion) -> dict[str, Any]:
    """One choice of a chat.completion (message) or text_completion (text) body."""
    if chat:
        content: dict[str, Any] = {"message": {"role": "assistant", "content": c.text}}
        logprobs = None if c.logprobs is None else _chat_logprobs(c.logprobs)
    else:
        content = {"text": c.text}
        logprobs = None if c.logprobs is None else _completion_logprobs(c.logprobs)
    return {"index": index, **content, "logprobs": logprobs, "finish_reason": c.finish_reason}


def _plain_choice(c: Completion) -> dict[str, Any]:
    """text, finish_reason and (when asked for) logprobs of one sample, for plain and chat lines."""
    out: dict[str, Any] = {"text": c.text, "finish_reason": c.finish_reason}
    if c.logprobs is not None:
        out["logprobs"] = [_plain_logprob(lp) for lp in c.logprobs]
    return out


def _plain_logprob(lp: TokenLogprob) -> dict[str, Any]:
    """{"token", "token_id", "logprob", "top_logprobs": [{"token", "token_id", "logprob"}]}."""
    top = [{"token": t.token, "token_id": t.token_id, "logprob": t.logprob} for t in lp.top]
    return {"token": lp.token, "token_id": lp.token_id, "logprob": lp.logprob, "top_logprobs": top}


def _chat_logprobs(logprobs: tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """A chat.completion choice's logprobs: {"content": [{token, logprob, bytes, top_logprobs}]}."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    content = [
        {**entry(lp.token, lp.logprob), "top_logprobs": [entry(t.token, t.logprob) for t in lp.top]}
        for lp in logprobs
    ]
    return {"content": content, "refusal": None}


def _completion_logprobs(logprobs: tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """A text_completion choice's logprobs: parallel lists; text_offset counts from the start of
    the completion's text; each top_logprobs entry holds the sampled token too (as OpenAI's:
    up to logprobs + 1 tokens)."""
    offsets, at = [], 0
    for lp in logprobs:
        offsets.append(at)
        at += len(lp.token)
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{**{t.token: t.logprob for t in lp.top}, lp.token: lp.logprob} for lp in logprobs],
        "text_offset": offsets,
    }


def error_record(bad: BadLine, job_tag: str, style: ErrorStyle = "inline") -> dict[str, Any]:
    """The output record of a bad input line (module docstring: the shapes)."""
    if not bad.openai:
        return {"id": bad.id, "line": bad.line, "error": {"code": bad.code, "message": bad.message}}
    message = f"line {bad.line}: {bad.message}"
    batch_error = {"code": bad.code, "message": message, "param": bad.param, "line": bad.line}
    envelope: dict[str, Any] = {"id": _ident(job_tag, "batch_req_", bad.id, line=bad.line), "custom_id": bad.id}
    if bad.id is None and style == "error_file":
        return {**envelope, "response": None, "error": batch_error}
    request_id = _ident(job_tag, "req_", bad.id, 32, line=bad.line)
    if style == "error_file":
        kind = "not_found_error" if bad.status == 404 else "invalid_request_error"
        error = {"message": message, "type": kind, "param": bad.param, "code": bad.code}
        response = {"status_code": bad.status, "request_id": request_id, "body": {"error": error}}
        return {**envelope, "response": response, "error": None}
    response = {"status_code": bad.status, "request_id": request_id, "body": None}
    return {**envelope, "response": response, "error": batch_error}


def _openai_envelope(job_tag: str, custom_id: str | int, status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": _ident(job_tag, "batch_req_", custom_id),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": _ident(job_tag, "req_", custom_id, 32), "body": body},
        "error": None,
    }


def record_key(obj: Any) -> bytes | None:
    """The key (index.key_of) of an output record read back, None if it is not one of ours."""
    if not isinstance(obj, dict):
        return None
    if "custom_id" in obj and "response" in obj:
        rid = obj["custom_id"]
        if _is_id(rid):
            return key_of(rid, 0)
        error = obj.get("error")
        if rid is None and isinstance(error, dict) and _is_int(error.get("line")):
            return key_of(None, error["line"])
        return None
    if _is_id(obj.get("id")):
        return key_of(obj["id"], 0)
    if obj.get("id") is None and _is_int(obj.get("line")) and "error" in obj:
        return key_of(None, obj["line"])
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    return isinstance(value, str) or _is_int(value)
