"""Model files batchllm refuses, each as a ModelError that says why: code named by a config or
tokenizer (never run), pickled weights (never loaded), damaged config.json values and GGUF
headers whose counts the file cannot hold."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from batchllm_cli.errors import ModelError
from batchllm_cli.models.loader import resolve_model

SRC = Path(__file__).resolve().parents[2] / "src"
TINY_CONFIG = {"model_type": "llama", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
               "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
               "max_position_embeddings": 64, "rms_norm_eps": 1e-5}
# Imported or run, this file leaves a mark beside itself.
EVIL = "import pathlib\npathlib.Path(__file__).with_name('CODE_RAN').write_text('yes')\nclass Evil: pass\n"


def model_dir(root: Path, config: dict | None = None, tokenizer_config: dict | None = None,
              weights: str = "model.safetensors") -> Path:
    d = root / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TINY_CONFIG if config is None else config))
    (d / "tokenizer.json").write_text("{}")
    if tokenizer_config is not None:
        (d / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (d / weights).write_bytes(b"\0" * 16)
    (d / "evil.py").write_text(EVIL)
    return d


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_a_directory_naming_custom_code_is_refused_and_the_code_does_not_run(tmp_path: Path, where: str) -> None:
    """auto_map in the config or the tokenizer config: a ModelError naming that file, no prompt
    (nothing reads standard input), and evil.py never imported."""
    auto_map = {"AutoConfig": "evil.Evil", "AutoTokenizer": ["evil.Evil", None]}
    if where == "config.json":
        d = model_dir(tmp_path, config={**TINY_CONFIG, "auto_map": auto_map})
    else:
        d = model_dir(tmp_path, tokenizer_config={"tokenizer_class": "Evil", "auto_map": auto_map})
    with pytest.raises(ModelError, match="never runs code from model files") as exc:
        resolve_model(str(d))
    assert str(d / where) in str(exc.value)
    assert not (d / "CODE_RAN").exists()


def test_every_transformers_loader_says_trust_remote_code_false() -> None:
    """Each from_pretrained call in the package passes trust_remote_code=False itself (transformers
    would otherwise ask on a terminal whether to run a model's code)."""
    calls = []
    for file in SRC.rglob("*.py"):
        text = file.read_text()
        for m in re.finditer(r"\.from_pretrained\(", text):
            if "#" in text[text.rfind("\n", 0, m.start()):m.start()]:
                continue  # a comment that names the call
            depth, i = 1, m.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            calls.append((file.name, text[m.start():i]))
    assert calls
    for name, call in calls:
        assert "trust_remote_code=False" in call, (name, call)


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.pt", "consolidated.pth"])
def test_pickled_weights_are_refused_naming_safetensors_and_gguf(tmp_path: Path, weights: str) -> None:
    """A directory (with or without config.json) or a file holding only a pickle is refused."""
    d = model_dir(tmp_path, weights=weights)
    for spec in (d, d / weights):
        with pytest.raises(ModelError, match="never loads pickles") as exc:
            resolve_model(str(spec))
        assert "safetensors" in str(exc.value) and ".gguf" in str(exc.value) and weights in str(exc.value)
    (d / "config.json").unlink()
    with pytest.raises(ModelError, match="never loads pickles"):
        resolve_model(str(d))


def test_a_directory_without_a_tokenizer_file_is_refused(tmp_path: Path) -> None:
    d = model_dir(tmp_path)
    (d / "tokenizer.json").unlink()
    (d / "tokenizer.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ModelError, match="no tokenizer"):
        resolve_model(str(d))


@pytest.mark.parametrize("change", [
    {"hidden_size": "big"}, {"num_hidden_layers": -1}, {"num_attention_heads": 0}, {"hidden_size": 10**12},
    {"vocab_size": 3.5}, {"max_position_embeddings": 10**15}, {"rms_norm_eps": -1.0}, {"rope_theta": "x"},
    {"num_key_value_heads": 3}, {"model_type": "gpt2"}, {"intermediate_size": None},
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_bad_config_values_are_a_model_error(tmp_path: Path, change: dict) -> None:
    """Wrong types, negative, zero and huge counts in config.json: a ModelError, not a crash."""
    d = model_dir(tmp_path, config={**TINY_CONFIG, **change})
    with pytest.raises(ModelError):
        resolve_model(str(d))


def test_a_config_that_is_not_json_is_a_model_error(tmp_path: Path) -> None:
    d = model_dir(tmp_path)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="config.json"):
        resolve_model(str(d))


def _gguf(path: Path, header: bytes) -> Path:
    path.write_bytes(b"GGUF" + header + b"\0" * 64)
    return path


@pytest.mark.parametrize("header, says", [
    (struct.pack("<IQQ", 3, 0, 2**62), "metadata entries"),
    (struct.pack("<IQQ", 3, 2**40, 0), "tensors"),
    (struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**60), "runs past the end"),
    (struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, 2**61), "runs past the end"),
    (struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 10, 2**61), "runs past the end"),
    (struct.pack("<IQQ", 3, 1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<I", 2**30), "dimensions"),
], ids=["kv-count", "tensor-count", "string-length", "string-array", "number-array", "dims"])
def test_gguf_counts_the_file_cannot_hold_are_a_model_error(tmp_path: Path, header: bytes, says: str) -> None:
    """Huge counts in a GGUF header are refused at once (no loop over 2**62 entries, no memory)."""
    with pytest.raises(ModelError, match=says):
        resolve_model(str(_gguf(tmp_path / "bad.gguf", header)))
