"""Output line shapes: plain result lines, error records, and OpenAI batch output lines.

Plain input -> {"id", "text", "finish_reason", "usage": {prompt_tokens, completion_tokens,
shared_prefix_tokens}}; a bad line -> {"id", "line", "error": {"code", "message"}}.
OpenAI batch input -> {"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error"}, the body shaped as the endpoint's own response (chat.completion or text_completion,
usage.prompt_tokens_details.cached_tokens = shared-prefix tokens), or status 400 with an error
body for a request the endpoint would refuse.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Sequence

import orjson

from batchllm_cli.io.index import key_of
from batchllm_cli.io.reader import BadLine, Kind
from batchllm_cli.types import Completion, TokenLogprob


def _ident(job_tag: str, prefix: str, custom_id: str, length: int = 24) -> str:
    """A stable id for an OpenAI object: the same job and request give the same id on resume."""
    digest = hashlib.sha256(f"{job_tag}\x00{prefix}\x00{custom_id}".encode()).hexdigest()
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
        record["usage"] = {
            "prompt_tokens": first.prompt_tokens,
            "completion_tokens": sum(c.completion_tokens for c in completions),
            "shared_prefix_tokens": first.shared_prefix_tokens,
        }
        return record
    output_tokens = sum(c.completion_tokens for c in completions)
    usage = {
        "prompt_tokens": first.prompt_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": first.prompt_tokens + output_tokens,
        "prompt_tokens_details": {"cached_tokens": first.shared_prefix_tokens},
    }
    chat = kind == "openai_chat"
    prefix, obj = ("chatcmpl-", "chat.completion") if chat else ("cmpl-", "text_completion")
    body = {"id": _ident(job_tag, prefix, first.id), "object": obj, "created": int(time.time()), "model": model,
            "choices": [_openai_choice(chat, k, c) for k, c in enumerate(completions)], "usage": usage}
    return _openai_envelope(job_tag, first.id, 200, body)


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
    the completion's text."""
    offsets, at = [], 0
    for lp in logprobs:
        offsets.append(at)
        at += len(lp.token)
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{t.token: t.logprob for t in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }


def error_record(bad: BadLine, job_tag: str) -> dict[str, Any]:
    """The output record of a bad input line."""
    if bad.openai and bad.id is not None:
        error = {
            "message": f"line {bad.line}: {bad.message}",
            "type": "invalid_request_error",
            "param": bad.param,
            "code": bad.code,
        }
        return _openai_envelope(job_tag, bad.id, 400, {"error": error})
    return {"id": bad.id, "line": bad.line, "error": {"code": bad.code, "message": bad.message}}


def _openai_envelope(job_tag: str, custom_id: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
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
    if isinstance(obj.get("custom_id"), str):
        return key_of(obj["custom_id"], 0)
    if isinstance(obj.get("id"), str):
        return key_of(obj["id"], 0)
    if obj.get("id") is None and isinstance(obj.get("line"), int) and "error" in obj:
        return key_of(None, obj["line"])
    return None
