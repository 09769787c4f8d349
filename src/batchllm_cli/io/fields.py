"""Checks of single input fields (sampling options, ids, chat messages) with actionable messages.

Each checker returns the clean value or raises FieldError naming the field; the reader turns a
FieldError into the line's error record.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from batchllm_cli.types import MAX_BIAS, MAX_LOGPROBS, MAX_PENALTY, SamplingParams

SAMPLING_FIELDS = (
    "max_tokens", "min_tokens", "temperature", "top_p", "top_k", "seed", "stop", "min_p",
    "presence_penalty", "frequency_penalty", "repetition_penalty", "logprobs", "top_logprobs", "logit_bias",
    "ignore_eos", "stop_token_ids",
)
# How a line kind spells logprobs: OpenAI chat `logprobs: true` + `top_logprobs: k`; OpenAI
# completions `logprobs: k`; our plain and chat lines either.
LogprobsStyle = Literal["chat", "completion", "any"]
LOGPROBS_OFF = -1  # a line's explicit "no logprobs" (wins over a job default)
MAX_N = 128  # most samples of one prompt (OpenAI's limit for n)
OPENAI_MAX_TEMPERATURE = 2.0  # OpenAI's API reference: temperature 0-2
OPENAI_MAX_STOP = 4  # OpenAI's API reference: up to 4 stop sequences
OPENAI_MAX_COMPLETION_LOGPROBS = 5  # OpenAI's API reference: /v1/completions logprobs 0-5
MAX_BIASED = 1024  # most tokens one line's logit_bias may name
MAX_STOP_TOKEN_IDS = 1024  # most tokens one line's stop_token_ids may name
ROLES = ("system", "user", "assistant")
MAX_SEED = 2**63  # seeds are kept as signed 64-bit values

# Options people send that change the output and that batchllm does not implement: refused
# unless set to the value that means "off", so that a request never silently runs differently.
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "best_of": (1,),
    "stream": (False,),
    "echo": (False,),
    "tools": ([],),
    "tool_choice": ("none", "auto"),  # harmless while no tools are given
    "functions": ([],),
    "function_call": ("none",),
    "response_format": ({"type": "text"},),
    "stream_options": (),
    "parallel_tool_calls": (True, False),  # only matters with tools
    "suffix": ("",),
    "prediction": (),
    "audio": (),
    "modalities": (["text"],),
    "reasoning_effort": (),
    "verbosity": ("medium",),  # OpenAI's default; other values ask for shorter or longer answers
    # vLLM's extras, at the values that are batchllm's behaviour
    "skip_special_tokens": (True,),  # batchllm's output text never holds special tokens
    "include_stop_str_in_output": (False,),  # the text is cut before the stop string
    "add_generation_prompt": (True,),  # messages always end with the assistant turn opened
    "chat_template_kwargs": ({},),
    "spaces_between_special_tokens": (True,),
    # guided decoding (vLLM, TGI)
    "guided_json": (), "guided_regex": (), "guided_choice": (), "guided_grammar": (), "structured_outputs": (),
}
# Fields that never change the output: accepted with any value (OpenAI's bookkeeping fields).
IGNORED_FIELDS = ("user", "metadata", "store", "prompt_cache_key", "safety_identifier", "service_tier")
# Other tools' names for batchllm's fields, accepted on plain and chat lines (both given: they must agree).
ALIASES = {
    "max_completion_tokens": "max_tokens",  # OpenAI chat
    "max_new_tokens": "max_tokens",  # Hugging Face generate
    "stop_sequences": "stop",  # Anthropic, TGI
    "num_return_sequences": "n",  # Hugging Face generate
}
_NEUTRAL_NAMES = frozenset(NEUTRAL_VALUES)
_SAMPLING_NAMES = frozenset(SAMPLING_FIELDS)


class FieldError(ValueError):
    """A field of one input line is unusable; `param` names it, `code` says how."""

    def __init__(self, param: str | None, message: str, code: str = "invalid_field") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class SamplingOverrides:
    """The sampling fields one line sets; None = the job's default (CLI option)."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logprobs: int | None = None  # LOGPROBS_OFF: none, whatever the job default
    min_tokens: int | None = None
    logit_bias: tuple[tuple[int, float], ...] | None = None
    ignore_eos: bool | None = None
    stop_token_ids: tuple[int, ...] | None = None

    def apply(self, defaults: SamplingParams) -> SamplingParams:
        """The line's SamplingParams; FieldError when its values and the job's defaults do not
        fit together (min_tokens above max_tokens)."""
        if self is NO_OVERRIDES:
            return defaults
        changes = {f.name: getattr(self, f.name) for f in fields(self)}
        changes = {k: v for k, v in changes.items() if v is not None}
        if changes.get("logprobs") == LOGPROBS_OFF:
            changes["logprobs"] = None
        low, high = changes.get("min_tokens", defaults.min_tokens), changes.get("max_tokens", defaults.max_tokens)
        if low > high:
            raise FieldError("min_tokens", f"min_tokens {low} is above max_tokens {high}")
        return replace(defaults, **changes)


NO_OVERRIDES = SamplingOverrides()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FieldError(name, f"{name} must be a number, got {_show(value)}")
    return float(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def sampling_overrides(
    obj: dict[str, Any], max_tokens_key: str = "max_tokens", logprobs_style: LogprobsStyle = "any",
    openai: bool = False,
) -> SamplingOverrides:
    """The sampling fields of `obj` (absent or null = default), checked for type and range;
    `openai`: an OpenAI request body, held to the ranges of OpenAI's API reference."""
    if _SAMPLING_NAMES.isdisjoint(obj) and max_tokens_key not in obj:
        return NO_OVERRIDES
    max_tokens = obj.get(max_tokens_key)
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise FieldError(max_tokens_key, f"{max_tokens_key} must be an integer >= 1, got {_show(max_tokens)}")
    temperature = obj.get("temperature")
    if temperature is not None:
        temperature = _number("temperature", temperature)
        if temperature < 0 or (openai and temperature > OPENAI_MAX_TEMPERATURE):
            where = f"in [0, {OPENAI_MAX_TEMPERATURE:g}]" if openai else ">= 0"
            raise FieldError("temperature", f"temperature must be {where}, got {temperature:g}")
    top_p = obj.get("top_p")
    if top_p is not None:
        top_p = _number("top_p", top_p)
        if not 0 < top_p <= 1:
            raise FieldError("top_p", f"top_p must be in (0, 1], got {top_p}")
    top_k = obj.get("top_k")
    if top_k is not None:
        if not _is_int(top_k) or top_k < -1:
            raise FieldError("top_k", f"top_k must be an integer >= 0 (or -1 for none), got {_show(top_k)}")
        top_k = max(top_k, 0)  # -1 is vLLM's spelling of "no top-k cut"
    seed = obj.get("seed")
    if seed is not None and (not _is_int(seed) or not -MAX_SEED <= seed < MAX_SEED):
        raise FieldError("seed", f"seed must be a 64-bit integer, got {_show(seed)}")
    stop = obj.get("stop")
    if stop is not None:
        stop = _stop(stop)
        if openai and len(stop) > OPENAI_MAX_STOP:
            raise FieldError("stop", f"stop takes at most {OPENAI_MAX_STOP} sequences, got {len(stop)}")
    min_p = _in_range(obj, "min_p", 0.0, 1.0)
    presence = _in_range(obj, "presence_penalty", -MAX_PENALTY, MAX_PENALTY)
    frequency = _in_range(obj, "frequency_penalty", -MAX_PENALTY, MAX_PENALTY)
    repetition = obj.get("repetition_penalty")
    if repetition is not None:
        repetition = _number("repetition_penalty", repetition)
        if repetition <= 0:
            raise FieldError("repetition_penalty", f"repetition_penalty must be > 0, got {repetition}")
    logprobs = _logprobs(obj, logprobs_style)
    if openai and logprobs_style == "completion" and logprobs is not None and logprobs > OPENAI_MAX_COMPLETION_LOGPROBS:
        raise FieldError("logprobs", f"logprobs takes at most {OPENAI_MAX_COMPLETION_LOGPROBS} on /v1/completions, got {logprobs}")
    min_tokens = obj.get("min_tokens")
    if min_tokens is not None and (not _is_int(min_tokens) or min_tokens < 0):
        raise FieldError("min_tokens", f"min_tokens must be an integer >= 0, got {_show(min_tokens)}")
    if min_tokens is not None and max_tokens is not None and min_tokens > max_tokens:
        raise FieldError("min_tokens", f"min_tokens {min_tokens} is above {max_tokens_key} {max_tokens}")
    ignore_eos = obj.get("ignore_eos")
    if ignore_eos is not None and not isinstance(ignore_eos, bool):
        raise FieldError("ignore_eos", f"ignore_eos must be true or false, got {_show(ignore_eos)}")
    return SamplingOverrides(
        max_tokens, temperature, top_p, top_k, seed, stop, min_p, presence, frequency, repetition, logprobs,
        min_tokens, _logit_bias(obj.get("logit_bias")), ignore_eos, _stop_token_ids(obj.get("stop_token_ids")),
    )


def _stop_token_ids(value: Any) -> tuple[int, ...] | None:
    """vLLM's stop_token_ids: a list of token ids (sorted, once each); None when absent."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_STOP_TOKEN_IDS or not all(_is_int(t) and t >= 0 for t in value):
        raise FieldError("stop_token_ids", f"stop_token_ids must be a list of at most {MAX_STOP_TOKEN_IDS} token ids >= 0, got {_show(value)}")
    return tuple(sorted(set(value)))


def _logit_bias(value: Any) -> tuple[tuple[int, float], ...] | None:
    """OpenAI's {"token id": bias} as sorted (id, bias) pairs; None when absent."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_BIASED:
        raise FieldError("logit_bias", f"logit_bias must be an object of at most {MAX_BIASED} \"token id\": bias pairs, got {_show(value)}")
    pairs = []
    for key, bias in value.items():
        # isdigit alone takes "²" and other digits int() refuses
        if not (isinstance(key, str) and key.isascii() and key.isdigit()):
            raise FieldError("logit_bias", f"logit_bias keys must be token ids (\"123\"), got {_show(key)}")
        bias = _number("logit_bias", bias)
        if not -MAX_BIAS <= bias <= MAX_BIAS:
            raise FieldError("logit_bias", f"logit_bias values must be in [-{MAX_BIAS:g}, {MAX_BIAS:g}], got {bias:g}")
        pairs.append((int(key), bias))
    return tuple(sorted(pairs))


def _in_range(obj: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    value = _number(name, value)
    if not low <= value <= high:
        raise FieldError(name, f"{name} must be in [{low:g}, {high:g}], got {value:g}")
    return value


def _count(name: str, value: Any) -> int:
    if not _is_int(value) or not 0 <= value <= MAX_LOGPROBS:
        raise FieldError(name, f"{name} must be an integer from 0 to {MAX_LOGPROBS}, got {_show(value)}")
    return value


def _logprobs(obj: dict[str, Any], style: LogprobsStyle) -> int | None:
    """How many alternatives per output token a line asks for: None = the job default,
    LOGPROBS_OFF = none, k >= 0 = the drawn token's logprob and the k most likely."""
    value, top = obj.get("logprobs"), obj.get("top_logprobs")
    if top is not None:
        if style == "completion":
            raise FieldError("top_logprobs", "top_logprobs is a chat field: /v1/completions takes logprobs: k", "unknown_field")
        top = _count("top_logprobs", top)
    if value is None or value is False:
        if top:
            raise FieldError("top_logprobs", "top_logprobs needs logprobs: true")
        return None if value is None else LOGPROBS_OFF
    if value is True and style != "completion":
        return top or 0
    if style == "chat":
        raise FieldError("logprobs", f"logprobs must be true or false, got {_show(value)}")
    if top is not None:
        raise FieldError("top_logprobs", "give top_logprobs with logprobs: true, or logprobs: k alone")
    return _count("logprobs", value)


def sample_count(obj: dict[str, Any]) -> int | None:
    """A line's `n` (how many samples of its prompt to answer with); None = the job default."""
    value = obj.get("n")
    if value is not None and (not _is_int(value) or not 1 <= value <= MAX_N):
        raise FieldError("n", f"n must be an integer from 1 to {MAX_N}, got {_show(value)}")
    return value


def _stop(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        raise FieldError("stop", f"stop must be a non-empty string or a list of them, got {_show(value)}")
    return tuple(items)


def check_unsupported(obj: dict[str, Any]) -> None:
    """Raises for an option batchllm does not implement, set to something other than off."""
    if _NEUTRAL_NAMES.isdisjoint(obj):
        return
    for name in sorted(_NEUTRAL_NAMES.intersection(obj)):
        value, neutral = obj[name], NEUTRAL_VALUES[name]
        if value is not None and value not in neutral:
            raise FieldError(name, f"{name}={_show(value)} is not supported by batchllm", "unsupported_field")


def check_openai_tools(body: dict[str, Any]) -> None:
    """OpenAI refuses tool_choice and parallel_tool_calls in a request without tools."""
    if body.get("tools"):
        return  # refused by check_unsupported: batchllm has no tool calling
    for name in ("tool_choice", "parallel_tool_calls"):
        if body.get(name) is not None:
            raise FieldError(name, f"{name} is only allowed when tools are given")


def resolve_aliases(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` with other tools' field names (ALIASES) under batchllm's; FieldError when a field
    is given under two names with different values."""
    if ALIASES.keys().isdisjoint(obj):
        return obj
    out = dict(obj)
    for alias, name in ALIASES.items():
        if alias not in out:
            continue
        value = out.pop(alias)
        if value is None:
            continue
        if out.get(name) is not None and out[name] != value:
            raise FieldError(alias, f"{alias} and {name} are the same field and differ: give one of them")
        out[name] = value
    return out


def check_typos(obj: dict[str, Any], known: tuple[str, ...]) -> None:
    """Raises for an unknown field that looks like a misspelt known one (it would be ignored)."""
    for name in obj:
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if close:
            raise FieldError(name, f"unknown field {name!r}: did you mean {close[0]!r}?", "unknown_field")


def record_id(value: Any, name: str) -> str | int:
    """An id as the line gives it (its JSON type is kept): a non-empty string, or an integer."""
    if _is_int(value) or (isinstance(value, str) and value):
        return value
    raise FieldError(name, f"{name} must be a non-empty string or an integer, got {_show(value)}")


def prompt_text(value: Any, name: str = "prompt") -> str:
    if not isinstance(value, str):
        raise FieldError(name, f"{name} must be a string, got {_show(value)}")
    if not value or value.isspace():
        raise FieldError(name, f"{name} is empty", "empty_prompt")
    return value


def messages(value: Any) -> tuple[dict[str, str], ...]:
    """Chat messages as (role, content) dicts; content parts of type text are joined."""
    if not isinstance(value, list) or not value:
        raise FieldError("messages", f"messages must be a non-empty list, got {_show(value)}")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise FieldError(where, f"{where} must be an object with role and content, got {_show(m)}")
        role = m.get("role")
        role = "system" if role == "developer" else role  # OpenAI's newer name for system
        if role not in ROLES:
            raise FieldError(f"{where}.role", f"{where}.role must be one of {', '.join(ROLES)}, got {_show(role)}")
        out.append({"role": role, "content": _content(m.get("content"), f"{where}.content")})
    if all(not m["content"] or m["content"].isspace() for m in out):
        raise FieldError("messages", "every message is empty", "empty_prompt")
    return tuple(out)


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise FieldError(where, f"{where}: only text parts are supported, got {_show(part)}", "unsupported_field")
            parts.append(part["text"])
        return "".join(parts)
    raise FieldError(where, f"{where} must be a string or a list of text parts, got {_show(value)}")
