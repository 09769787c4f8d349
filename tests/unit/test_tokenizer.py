"""Tokenizer (GGUF conversion cache, encode/decode, chat), incremental text and stop conditions."""

from __future__ import annotations

import numpy as np
import pytest

from batchllm_cli.engine.state import GroupState, RequestState
from batchllm_cli.engine.stop import StopChecker
from batchllm_cli.engine.tokenizer import IncrementalDetokenizer, Tokenizer
from batchllm_cli.models.loader import embedded_gguf_path
from batchllm_cli.types import Request, SamplingParams

TEXT = "Héllo wörld! 你好, naïve café 🙂 -- the end."


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("batchllm-cache")


@pytest.fixture(scope="module")
def tok(cache_root) -> Tokenizer:
    mp = pytest.MonkeyPatch()
    mp.setenv("BATCHLLM_CACHE_DIR", str(cache_root))
    path = embedded_gguf_path()
    yield Tokenizer.load(path.parent, path.name)
    mp.undo()


def test_gguf_tokenizer_is_cached_and_read_back(tok, cache_root, monkeypatch):
    import transformers

    entries = list((cache_root / "tokenizers").iterdir())
    assert len(entries) == 1 and (entries[0] / "tokenizer.json").is_file()
    calls = []
    real = transformers.AutoTokenizer.from_pretrained

    def spy(*args, **kwargs):
        calls.append(kwargs.get("gguf_file"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy)
    monkeypatch.setenv("BATCHLLM_CACHE_DIR", str(cache_root))
    path = embedded_gguf_path()
    again = Tokenizer.load(path.parent, path.name)
    assert calls == [None]  # read from the cache, not converted from the GGUF again
    assert again.encode(TEXT) == tok.encode(TEXT)
    assert again.encode_chat([{"role": "user", "content": "hi"}]) == tok.encode_chat([{"role": "user", "content": "hi"}])


def test_encode_decode_round_trip_and_batch(tok):
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    texts = [TEXT, "a", "The quick brown fox"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch([]) == []


def test_chat_template_adds_the_assistant_turn(tok):
    ids = tok.encode_chat([{"role": "user", "content": "What is 2+2?"}])
    text = tok.decode(ids, skip_special_tokens=False)
    assert "What is 2+2?" in text
    assert text.rstrip().endswith("<|im_start|>assistant")


def test_incremental_text_equals_decoding_everything(tok):
    ids = tok.encode(TEXT)
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.add(i) for i in ids]
    assert "".join(pieces) == detok.text == TEXT


def _state(tok, text_ids, **params) -> RequestState:
    req = Request(0, "r", np.array([1, 2], dtype=np.int32), SamplingParams(**params))
    group = GroupState(position=0, prefix_len=0, members=(0,), prefix_ids=req.prompt_ids[:0])
    return RequestState(request=req, group=group)


def _feed(checker, state, ids):
    for i in ids:
        state.output_ids.append(i)
        reason = checker(state)
        if reason:
            return reason
    return None


def test_stop_string_ends_the_request_and_cuts_the_text(tok):
    ids = tok.encode("The answer is 42. STOP and more text")
    checker = StopChecker(tok, eos_token_ids=(2,))
    state = _state(tok, ids, stop=("STOP", "never"))
    assert _feed(checker, state, ids) == "stop"
    assert len(state.output_ids) < len(ids)  # ended early
    assert checker.final_text(state) == "The answer is 42. "


def test_eos_stops_unless_ignored_and_text_skips_it(tok):
    ids = tok.encode("Hi there") + [2] + tok.encode(" more")
    checker = StopChecker(tok, eos_token_ids=(2,))
    state = _state(tok, ids)
    assert _feed(checker, state, ids) == "stop"
    assert state.output_ids[-1] == 2 and checker.final_text(state) == "Hi there"
    ignoring = _state(tok, ids, ignore_eos=True)
    assert _feed(checker, ignoring, ids) is None
    assert checker.final_text(ignoring) == "Hi there more"
