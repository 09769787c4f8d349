"""GGUF files: the HF config and the dequantized HF-named tensors, read with one file parse.

Built on transformers' GGUF tables (config key renames, the Llama q/k un-permutation), the gguf
package's name map and dequantizer, and our header reader (`gguf_file.py`: 0.01 s where the
gguf package's reader takes 2-4 s on the embedded model). transformers' own
`load_gguf_checkpoint` parses the file twice and rebuilds the tensor-name map once per submodule
(about 15 s for the 135M model); this reads it once and maps names once.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from batchllm_cli.errors import ModelError
from batchllm_cli.models.gguf_file import GGUFArray, GGUFFile

_ARCHITECTURES = ("llama", "qwen2")  # GGUF architecture names we can run


@functools.lru_cache(maxsize=1)
def _reader(path: str) -> GGUFFile:
    """The parsed header (tensors stay in the memory map), kept for the config read and the
    weight load that follows."""
    try:
        return GGUFFile(path)
    except (OSError, ValueError, struct.error) as exc:
        raise ModelError(f"cannot read GGUF file {path}: {exc}") from exc


def _field(reader: GGUFFile, key: str) -> Any:
    value = reader.fields.get(key)
    return value.values() if isinstance(value, GGUFArray) else value


def read_gguf_config(path: Path) -> Any:
    """The transformers config (LlamaConfig, Qwen2Config, MistralConfig) stored in a GGUF file."""
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import GGUF_TO_TRANSFORMERS_MAPPING

    reader = _reader(str(path))
    arch = _field(reader, "general.architecture")
    if arch not in _ARCHITECTURES:
        supported = ", ".join(_ARCHITECTURES)
        raise ModelError(f"GGUF architecture {arch!r} is not supported; batchllm runs {supported}")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise ModelError(
            f"{path.name} carries Llama-3.1-style rope frequency factors, which the GGUF loader does not "
            "read yet; use the model's safetensors directory instead"
        )
    renames = GGUF_TO_TRANSFORMERS_MAPPING["config"]
    values: dict[str, Any] = {}
    for prefix, table in ((arch, renames[arch]), ("tokenizer", renames["tokenizer"])):
        for key, hf_key in table.items():
            value = _field(reader, f"{prefix}.{key}")
            if hf_key is not None and value is not None:
                values[hf_key] = value
    if "vocab_size" not in values:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, GGUFArray):
            raise ModelError(f"{path.name} states no vocab size and has no tokenizer vocabulary")
        values["vocab_size"] = len(tokens)
    values["tie_word_embeddings"] = "output.weight" not in names
    model_name = str(_field(reader, "general.name") or "")
    # llama.cpp stores Mistral models as "llama"; transformers tells them apart by the name.
    model_type = "mistral" if arch == "llama" and "mistral" in model_name.lower() else arch
    return AutoConfig.for_model(model_type, **values)


def _hf_names(hf_config: Any) -> list[str]:
    """Module names (no .weight/.bias) of a Llama-family HF checkpoint."""
    names = ["model.embed_tokens", "model.norm", "lm_head"]
    per_layer = (
        "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
        "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    )
    for i in range(hf_config.num_hidden_layers):
        names.extend(f"model.layers.{i}.{n}" for n in per_layer)
    return names


def iter_gguf_tensors(path: Path, hf_config: Any) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, dequantized float32 array) for every weight of the file, q/k un-permuted."""
    from gguf import MODEL_ARCH_NAMES, GGMLQuantizationType, dequantize, get_tensor_name_map
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    reader = _reader(str(path))
    arch = _field(reader, "general.architecture")
    arch_id = next(k for k, v in MODEL_ARCH_NAMES.items() if v == arch)
    name_map = get_tensor_name_map(arch_id, hf_config.num_hidden_layers)
    to_hf = {}
    for hf_name in _hf_names(hf_config):
        gguf_name = name_map.get_name(hf_name)
        if gguf_name is not None:
            to_hf[gguf_name + ".weight"] = hf_name + ".weight"
            to_hf[gguf_name + ".bias"] = hf_name + ".bias"
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=hf_config.to_dict())
    for tensor in reader.tensors:
        if tensor.name not in to_hf:
            raise ModelError(f"unexpected tensor {tensor.name!r} in {path.name}")
        try:
            weights = dequantize(reader.tensor_data(tensor), GGMLQuantizationType(tensor.ggml_type))
        except (ValueError, KeyError, IndexError) as exc:  # a table entry past the file's end, an unknown type
            raise ModelError(f"cannot read tensor {tensor.name!r} of {path.name}: {exc}") from None
        result = processor.process(weights=weights, name=tensor.name)
        array = np.ascontiguousarray(result.weights, dtype=np.float32)
        # Unquantized tensors come back as read-only views of the memory map; torch wants writable.
        yield to_hf[tensor.name], array if array.flags.writeable else array.copy()
