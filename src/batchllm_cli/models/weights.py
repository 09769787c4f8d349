"""Hugging Face tensor names mapped onto our parameters (merged qkv and gate_up projections)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from batchllm_cli.errors import ModelError
from batchllm_cli.models.config import ModelConfig

# HF names that carry no weights we need (rotary frequencies are recomputed from the config).
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Target:
    """Where one HF tensor goes: our parameter, and the row range of it (merged projections)."""

    name: str
    row_start: int | None = None  # None: the whole parameter
    row_end: int | None = None


def map_hf_name(hf_name: str, config: ModelConfig) -> Target | None:
    """Our target for an HF state-dict name; None for names we skip; ModelError for unknown ones."""
    if _IGNORED.match(hf_name):
        return None
    if hf_name == "model.embed_tokens.weight":
        return Target("embed_tokens.weight")
    if hf_name == "model.norm.weight":
        return Target("norm")
    if hf_name == "lm_head.weight":
        # Tied checkpoints sometimes still store the head; the embedding is the one we use.
        return None if config.tie_word_embeddings else Target("lm_head.weight")
    m = _LAYER.match(hf_name)
    if m:
        prefix, rest = f"layers.{m.group(1)}.", m.group(2)
        q, kv, inter = config.q_size, config.kv_size, config.intermediate_size
        simple = {
            "input_layernorm.weight": "input_norm",
            "post_attention_layernorm.weight": "post_attn_norm",
            "self_attn.o_proj.weight": "o_proj.weight",
            "mlp.down_proj.weight": "down_proj.weight",
        }
        if rest in simple:
            return Target(prefix + simple[rest])
        rows = {
            "self_attn.q_proj": ("qkv_proj", 0, q),
            "self_attn.k_proj": ("qkv_proj", q, q + kv),
            "self_attn.v_proj": ("qkv_proj", q + kv, q + 2 * kv),
            "mlp.gate_proj": ("gate_up_proj", 0, inter),
            "mlp.up_proj": ("gate_up_proj", inter, 2 * inter),
        }
        module, _, kind = rest.rpartition(".")
        if module in rows and kind in ("weight", "bias"):
            target, start, end = rows[module]
            return Target(f"{prefix}{target}.{kind}", start, end)
    raise ModelError(f"unexpected tensor {hf_name!r} in the checkpoint: not a Llama-family weight")


class WeightLoader:
    """Copies HF-named tensors into a model's parameters and checks that every one was filled."""

    def __init__(self, model: torch.nn.Module, config: ModelConfig) -> None:
        self.params = dict(model.named_parameters())
        self.config = config
        self.filled: dict[str, int] = {name: 0 for name in self.params}  # rows written

    def load(self, hf_name: str, tensor: torch.Tensor) -> None:
        target = map_hf_name(hf_name, self.config)
        if target is None:
            return
        param = self.params.get(target.name)
        if param is None:
            raise ModelError(f"checkpoint tensor {hf_name!r} has no place in the model ({target.name})")
        dest = param.data if target.row_start is None else param.data[target.row_start : target.row_end]
        if tuple(dest.shape) != tuple(tensor.shape):
            raise ModelError(
                f"checkpoint tensor {hf_name!r} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(dest.shape)}: config.json and weights disagree"
            )
        with torch.no_grad():
            dest.copy_(tensor)
        self.filled[target.name] += dest.shape[0]

    def check_complete(self) -> None:
        """ModelError naming the parameters the checkpoint did not (fully) provide."""
        missing = [n for n, p in self.params.items() if self.filled[n] != p.shape[0]]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ModelError(f"checkpoint is missing weights for {len(missing)} parameter(s): {shown}")
