"""The Llama-family decoder (Llama 2/3, Mistral, Qwen2) over paged KV caches and pluggable ops.

`ops` is the module `batchllm_kernels.get_ops(device)` returns; every layer calls the same
functions with the same step metadata, so the model never branches on CPU vs GPU.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import nn
from torch.nn import functional as F

from batchllm_cli.models.config import ModelConfig
from batchllm_cli.models.rope import build_cos_sin_cache
from batchllm_kernels.metadata import AttentionMetadata

KVCache = tuple[torch.Tensor, torch.Tensor]  # each [num_blocks, block_size, num_kv_heads, head_dim]


class DecoderLayer(nn.Module):
    """Pre-norm attention and SwiGLU MLP, with the residual add fused into the norms."""

    def __init__(self, config: ModelConfig, ops: ModuleType) -> None:
        super().__init__()
        self.config = config
        self.ops = ops
        h = config.hidden_size
        self.input_norm = nn.Parameter(torch.ones(h))
        self.qkv_proj = nn.Linear(h, config.q_size + 2 * config.kv_size, bias=config.attention_bias)
        self.o_proj = nn.Linear(config.q_size, h, bias=False)
        self.post_attn_norm = nn.Parameter(torch.ones(h))
        self.gate_up_proj = nn.Linear(h, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, h, bias=False)
        self.scale = config.head_dim**-0.5

    def forward(
        self,
        positions: torch.Tensor,  # [num_tokens] int64
        hidden: torch.Tensor,  # [num_tokens, hidden]
        residual: torch.Tensor | None,  # [num_tokens, hidden], None before the first layer
        meta: AttentionMetadata,
        kv_cache: KVCache,
        cos_sin_cache: torch.Tensor,  # [max_position, head_dim] float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q, residual = self.attention_input(positions, hidden, residual, kv_cache, meta.slot_mapping, cos_sin_cache)
        return self.attention_output(self.attend(q, kv_cache, meta), residual)

    # The layer in three parts: what attention needs (the token count alone shapes it), attention
    # itself (the step's layout shapes its launch), and what follows. engine/mixed_graphs.py
    # captures the first and last parts in CUDA graphs and runs attention between them.
    def attention_input(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        kv_cache: KVCache,
        slot_mapping: torch.Tensor,  # [num_tokens] int64, < 0: a padding token, nothing stored
        cos_sin_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Norm, QKV projection and rotary embedding; stores the tokens' K/V. Returns q
        [num_tokens, heads, head_dim] and the residual stream."""
        cfg, ops = self.config, self.ops
        num_tokens = hidden.shape[0]
        x, residual = ops.rms_norm(hidden, self.input_norm, cfg.rms_norm_eps, residual)
        qkv = self.qkv_proj(x)  # [num_tokens, q_size + 2 * kv_size]
        q, k, v = qkv.split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=-1)
        q = q.view(num_tokens, cfg.num_heads, cfg.head_dim)
        k = k.view(num_tokens, cfg.num_kv_heads, cfg.head_dim)
        v = v.view(num_tokens, cfg.num_kv_heads, cfg.head_dim)
        q, k = ops.rotary_embedding(q, k, positions, cos_sin_cache)
        ops.store_kv(k, v, kv_cache[0], kv_cache[1], slot_mapping)
        return q, residual

    def attend(self, q: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata) -> torch.Tensor:
        """Paged attention of the step's queries: [num_tokens, heads, head_dim]."""
        return self.ops.attention(q, kv_cache[0], kv_cache[1], meta, self.scale)

    def attention_output(self, o: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output projection, norm and SwiGLU MLP of attention's output o [num_tokens, heads,
        head_dim]; returns the layer's output and the residual stream."""
        cfg, ops = self.config, self.ops
        hidden = self.o_proj(o.reshape(o.shape[0], cfg.q_size))
        x, residual = ops.rms_norm(hidden, self.post_attn_norm, cfg.rms_norm_eps, residual)
        hidden = self.down_proj(ops.silu_and_mul(self.gate_up_proj(x)))
        return hidden, residual


class LlamaForCausalLM(nn.Module):
    """Token ids of one step in, final hidden states out; logits only for the rows asked for."""

    def __init__(self, config: ModelConfig, ops: ModuleType) -> None:
        super().__init__()
        self.config = config
        self.ops = ops
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, ops) for _ in range(config.num_layers))
        self.norm = nn.Parameter(torch.ones(config.hidden_size))
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        # float32 whatever the weights' dtype: positions up to 128k need the precision.
        self.register_buffer("cos_sin_cache", build_cos_sin_cache(config, "cpu"), persistent=False)

    def init_buffers(self, device: torch.device | str) -> None:
        """Rebuilds non-parameter state after the model was created on the meta device."""
        self.cos_sin_cache = build_cos_sin_cache(self.config, device)

    def forward(
        self,
        input_ids: torch.Tensor,  # [num_tokens] int64
        positions: torch.Tensor,  # [num_tokens] int64
        meta: AttentionMetadata,
        kv_caches: list[KVCache],  # one per layer
    ) -> torch.Tensor:  # [num_tokens, hidden]
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(positions, hidden, residual, meta, kv_cache, self.cos_sin_cache)
        hidden, _ = self.final_norm(hidden, residual)
        return hidden

    def final_norm(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The last layer's output plus the residual stream, normalized."""
        return self.ops.rms_norm(hidden, self.norm, self.config.rms_norm_eps, residual)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, hidden] -> [n, vocab] float32 logits."""
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight).float()
