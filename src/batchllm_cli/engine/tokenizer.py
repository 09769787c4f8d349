"""The tokenizer: the model's HF fast tokenizer, with a disk cache for tokenizers read from GGUF.

Converting a GGUF file's vocabulary into a fast tokenizer takes seconds; the converted tokenizer
is saved under `$BATCHLLM_CACHE_DIR/tokenizers/` (default ~/.cache/batchllm), keyed by the GGUF
file's path, size and modification time, and read from there on later runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from batchllm_cli.errors import InputError, ModelError


def cache_dir() -> Path:
    """Where batchllm keeps converted artifacts ($BATCHLLM_CACHE_DIR, else ~/.cache/batchllm)."""
    return Path(os.environ.get("BATCHLLM_CACHE_DIR") or Path.home() / ".cache" / "batchllm")


def _gguf_key(gguf_path: Path) -> str:
    st = gguf_path.stat()
    raw = f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


class Tokenizer:
    """Text <-> token ids for one model: plain prompts, chat messages, batches, decoding."""

    def __init__(self, hf_tokenizer: Any) -> None:
        self.hf = hf_tokenizer
        self._token_texts: dict[int, str] = {}

    @classmethod
    def load(cls, path: str | os.PathLike, gguf_file: str | None = None) -> "Tokenizer":
        """The tokenizer of a model directory, or of `gguf_file` inside `path` (cached)."""
        from transformers import AutoTokenizer

        try:
            if gguf_file is None:
                return cls(AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False))
            gguf_path = Path(path) / gguf_file
            cached = cache_dir() / "tokenizers" / _gguf_key(gguf_path)
            if (cached / "tokenizer.json").is_file():
                try:
                    return cls(AutoTokenizer.from_pretrained(str(cached), local_files_only=True, trust_remote_code=False))
                except Exception:  # a damaged cache entry: convert again below
                    shutil.rmtree(cached, ignore_errors=True)
            hf = AutoTokenizer.from_pretrained(str(path), gguf_file=gguf_file, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read the tokenizer of {path}: {exc}") from exc
        _save_atomically(hf, cached)
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def eos_token_id(self) -> int | None:
        return self.hf.eos_token_id

    def encode(self, text: str) -> list[int]:
        """Token ids of a plain prompt, with the special tokens (BOS) the model expects."""
        return list(self.hf(text, add_special_tokens=True)["input_ids"])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """encode() of many prompts at once (the fast tokenizer runs them in parallel)."""
        if not texts:
            return []
        return [list(ids) for ids in self.hf(list(texts), add_special_tokens=True)["input_ids"]]

    def encode_chat(self, messages: Sequence[dict]) -> list[int]:
        """Token ids of a conversation through the model's chat template, ready for the reply."""
        if getattr(self.hf, "chat_template", None) is None:
            raise InputError("this model has no chat template: send plain prompts instead of messages")
        try:
            out = self.hf.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=True)
        except Exception as exc:  # jinja errors: a message the template cannot render
            raise InputError(f"the chat template cannot render these messages: {exc}") from exc
        ids = out["input_ids"] if hasattr(out, "keys") else out
        return [int(i) for i in ids]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """One token's text on its own, special tokens included (what logprob reports show;
        a token holding part of a multi-byte character shows as U+FFFD)."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self.hf.decode([token_id], skip_special_tokens=False)
        return text


def _save_atomically(hf: Any, target: Path) -> None:
    """Saves a converted tokenizer; a cache that cannot be written only costs time next run."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        hf.save_pretrained(str(tmp))
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass


class IncrementalDetokenizer:
    """Text of a growing list of output ids, appended token by token.

    Decodes a small window of recent ids, so that a token that completes a multi-byte
    character or merges with the previous one produces the right text, in O(window) per token.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self._prefix_offset = 0
        self._read_offset = 0

    def add(self, token_id: int) -> str:
        """Appends one id; returns the new text it made visible (may be empty)."""
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix_offset : self._read_offset])
        after = decode(self.ids[self._prefix_offset :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            delta = after[len(before) :]
            self.text += delta
            self._prefix_offset = self._read_offset
            self._read_offset = len(self.ids)
            return delta
        return ""
