"""EngineConfig: device strings, validation."""

from __future__ import annotations

import pytest
import torch

from batchllm_cli.engine.config import EngineConfig, normalize_device
from batchllm_cli.errors import ConfigError


@pytest.mark.parametrize("given, want", [("cuda", "cuda:0"), ("cuda:0", "cuda:0"), ("cuda:3", "cuda:3"), ("cpu", "cpu")])
def test_device_strings_are_normalised_once(given: str, want: str) -> None:
    assert normalize_device(given) == want
    assert EngineConfig(device=given).device == want


def test_a_cuda_config_always_names_an_index() -> None:
    # torch.cuda.set_device(torch.device("cuda")) raises on torch >= 2.11: the engine makes its
    # device current, so every CUDA config must carry an index.
    device = torch.device(EngineConfig(device="cuda").device)
    assert device.type == "cuda" and device.index == 0


def test_copies_keep_the_normalised_device() -> None:
    assert EngineConfig(device="cuda").with_overrides(token_budget=64).device == "cuda:0"


@pytest.mark.parametrize("bad", ["accelerator", "tpu:0", ""])
def test_unknown_devices_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        EngineConfig(device=bad)


def test_mixed_step_graphs_are_on_for_cuda_only_and_fit_the_budget() -> None:
    from batchllm_cli.engine.config import load_engine_config
    from batchllm_cli.engine.mixed_graphs import buffer_rows

    cuda, cpu = load_engine_config("cuda", available=False), load_engine_config("cpu")
    assert cuda.cuda_graphs and cuda.mixed_graph_tokens == 2048 and cpu.mixed_graph_tokens == 0
    # the runner's static buffers: the largest step a graph holds at the default budget
    assert buffer_rows(cuda.mixed_graph_tokens, cuda.token_budget) == 2048
    assert load_engine_config("cuda", available=False, mixed_graph_tokens=0).mixed_graph_tokens == 0
    with pytest.raises(ConfigError):
        EngineConfig(mixed_graph_tokens=-1)
