"""The rotary cos/sin table, built once per model, including Llama-3 and linear rope scaling."""

from __future__ import annotations

import math

import torch

from batchllm_cli.models.config import ModelConfig


def inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    """Per-pair rotation frequencies [head_dim / 2] float32, after the config's rope scaling."""
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    inv = 1.0 / (config.rope_theta**exponents)
    scaling = config.rope_scaling
    if scaling is None:
        return inv
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return inv / factor
    # llama3: long wavelengths slowed by `factor`, short ones kept, a smooth ramp between.
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old_len / low, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


def build_cos_sin_cache(config: ModelConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """[max_position, head_dim] float32 rows cat(cos, sin) of position x frequency.

    Computed on the CPU, even inside a `torch.device("meta")` block, then moved: the table is
    the same on every device.
    """
    inv = inverse_frequencies(config)
    freqs = torch.outer(torch.arange(config.max_position, dtype=torch.float32, device="cpu"), inv)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(device)
