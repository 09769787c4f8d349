"""The model shape the engine needs, read from a Hugging Face config of the Llama family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchllm_cli.errors import ModelError

if TYPE_CHECKING:  # torch is imported where a dtype is needed: `batchllm models` and `plan` start fast
    import torch

# model_type -> whether q/k/v projections carry a bias when the config does not say.
SUPPORTED_MODEL_TYPES = {"llama": False, "mistral": False, "qwen2": True}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

_DTYPES = ("float32", "bfloat16", "float16")

# Bounds of a config's counts: far above any released model (the largest: 256k-token vocabularies,
# 16,384-wide hidden states, 126 layers, 10M-token contexts); past them the file is damaged, and
# building the model would exhaust memory instead of saying so.
_LIMITS = {
    "vocab_size": 1 << 22, "hidden_size": 1 << 17, "intermediate_size": 1 << 20, "num_layers": 1 << 12,
    "num_heads": 1 << 12, "num_kv_heads": 1 << 12, "head_dim": 1 << 12, "max_position": 1 << 30,
}


def to_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from its name ("bfloat16") or itself."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ModelError(f"unsupported dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return getattr(torch, dtype)


def _eos_tuple(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _rope(hf_config: Any) -> tuple[float, dict | None]:
    """(rope_theta, scaling dict or None) from either transformers v5 `rope_parameters` or v4 fields."""
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    legacy = getattr(hf_config, "rope_scaling", None)
    if legacy and not params.get("rope_type"):
        params.update(legacy)
    theta = params.pop("rope_theta", None) or getattr(hf_config, "rope_theta", None) or 10000.0
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ModelError(
            f"rope scaling type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    if rope_type == "default":
        return float(theta), None
    params["rope_type"] = rope_type
    params.pop("type", None)
    return float(theta), params


@dataclass(frozen=True)
class ModelConfig:
    """The numbers that fix a Llama-family decoder's shapes and numerics."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None  # {"rope_type": "llama3" | "linear", "factor": ..., ...}
    max_position: int
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v projections have a bias (Qwen2)
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None

    def __post_init__(self) -> None:
        for name, high in _LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise ModelError(f"the model config's {name} must be an integer from 1 to {high:,}, got {value!r}")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not (isinstance(value, float) and 0.0 < value < float("inf")):
                raise ModelError(f"the model config's {name} must be a positive number, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ModelError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )

    @classmethod
    def from_hf(cls, hf_config: Any) -> "ModelConfig":
        """Reads a transformers LlamaConfig / Qwen2Config / MistralConfig (or look-alike);
        ModelError when a value is missing, of the wrong type or out of range."""
        try:
            return cls._from_hf(hf_config)
        except (TypeError, ValueError, AttributeError, OverflowError, ZeroDivisionError) as exc:
            raise ModelError(f"the model config is damaged ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _from_hf(cls, hf_config: Any) -> "ModelConfig":
        model_type = getattr(hf_config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelError(
                f"model type {model_type!r} is not supported; batchllm runs "
                f"{', '.join(SUPPORTED_MODEL_TYPES)} models"
            )
        act = getattr(hf_config, "hidden_act", "silu")
        if act != "silu":
            raise ModelError(f"activation {act!r} is not supported (only silu)")
        if getattr(hf_config, "mlp_bias", False):
            raise ModelError("MLP biases are not supported")
        heads = hf_config.num_attention_heads
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
        max_position = hf_config.max_position_embeddings
        window = getattr(hf_config, "sliding_window", None)
        if model_type == "mistral" and window:
            # Without sliding-window attention, positions past the window would be wrong.
            max_position = min(max_position, window)
        theta, scaling = _rope(hf_config)
        bias = getattr(hf_config, "attention_bias", None)
        return cls(
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size,
            num_layers=hf_config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            rms_norm_eps=float(hf_config.rms_norm_eps),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position=int(max_position),
            tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
            attention_bias=SUPPORTED_MODEL_TYPES[model_type] if bias is None else bool(bias),
            eos_token_ids=_eos_tuple(getattr(hf_config, "eos_token_id", None)),
            bos_token_id=getattr(hf_config, "bos_token_id", None),
        )

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def kv_bytes_per_token(self, dtype: str | torch.dtype) -> int:
        """Bytes of K and V cache one token takes over all layers."""
        elem = to_dtype(dtype).itemsize
        return 2 * self.num_layers * self.kv_size * elem

    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        h, i = self.hidden_size, self.intermediate_size
        attn = h * (self.q_size + 2 * self.kv_size) + self.q_size * h
        if self.attention_bias:
            attn += self.q_size + 2 * self.kv_size
        layer = attn + 3 * h * i + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + self.num_layers * layer + h + head
