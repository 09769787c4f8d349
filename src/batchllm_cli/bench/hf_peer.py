"""The Hugging Face peer: transformers' continuous batching (`generate_batch`) on the same shape.

PEERS.md's end-to-end figures come from this path: `AutoModelForCausalLM.from_config` (random
weights, like our presets), paged KV cache with prefix block sharing, greedy, EOS disabled.
transformers 5.x moved its continuous-batching options around (a `ContinuousBatchingConfig`
argument in recent versions, fields of `GenerationConfig` before), so the call is built from
what the installed version accepts.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

from batchllm_cli.bench.report import RunResult
from batchllm_cli.bench.workloads import Workload

SYSTEM = "hf-generate-batch"
NO_EOS = -1  # transformers' continuous batching reads -1 as "no EOS"
# On a CPU the peer's automatic KV sizing asks for memory statistics it cannot get and takes
# tens of seconds; a fixed, small cache keeps the CPU path usable (tests, smoke runs).
CPU_NUM_BLOCKS = 64
CPU_MAX_BATCH_TOKENS = 256


def build_hf_model(hf_config: Any, dtype: str, device: str) -> Any:
    """A transformers model of `hf_config` with random weights, in `dtype` on `device`."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch_dtype)
    return model.eval()


def _generation_config(max_new_tokens: int, cb_options: dict[str, Any]) -> tuple[Any, Any]:
    """(GenerationConfig, ContinuousBatchingConfig or None) for this transformers version."""
    from transformers import GenerationConfig

    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=NO_EOS, pad_token_id=0)
    if not cb_options:
        return gen, None
    try:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
    except ImportError:  # older 5.x: the options are GenerationConfig attributes
        for k, v in cb_options.items():
            setattr(gen, k, v)
        return gen, None
    return gen, ContinuousBatchingConfig(**cb_options)


def generate_batch(model: Any, inputs: list[list[int]], max_new_tokens: int, *, warmup: bool, cb_options: dict[str, Any]) -> dict[str, Any]:
    """model.generate_batch with the arguments this transformers version knows."""
    gen, cb = _generation_config(max_new_tokens, cb_options)
    accepted = inspect.signature(model.generate_batch).parameters
    kwargs: dict[str, Any] = {"generation_config": gen}
    if "progress_bar" in accepted:
        kwargs["progress_bar"] = False
    if "warmup" in accepted:
        kwargs["warmup"] = warmup
    if cb is not None and "continuous_batching_config" in accepted:
        kwargs["continuous_batching_config"] = cb
    return model.generate_batch(inputs=inputs, **kwargs)


def run_hf_peer(
    hf_config: Any,
    workload: Workload,
    dtype: str,
    device: str,
    *,
    warmup: bool = True,
    cb_options: dict[str, Any] | None = None,
) -> RunResult:
    """One timed `generate_batch` call over the whole workload (after an untimed small one)."""
    if cb_options is None:
        cb_options = {} if device.startswith("cuda") else {"num_blocks": CPU_NUM_BLOCKS, "max_batch_tokens": CPU_MAX_BATCH_TOKENS}
    model = build_hf_model(hf_config, dtype, device)
    inputs = workload.prompt_lists()
    out_len = workload.spec.output_len
    try:
        if warmup:  # CUDA context, kernels, allocator: not the peer's steady-state cost
            generate_batch(model, inputs[:2], min(out_len, 8), warmup=True, cb_options=cb_options)
        _sync(device)
        start = time.perf_counter()
        results = generate_batch(model, inputs, out_len, warmup=True, cb_options=cb_options)
        _sync(device)
        elapsed = time.perf_counter() - start
    finally:
        attn = str(getattr(model.config, "_attn_implementation", "?"))
        del model
    outputs = list(results.values())
    lens = [len(getattr(o, "generated_tokens", ()) or ()) for o in outputs]
    errors = [o for o in outputs if getattr(o, "error", None)]
    notes = [f"attn_implementation={attn}", "timed: one generate_batch call, its own warmup included"]
    if len(outputs) != workload.num_requests:
        notes.append(f"{workload.num_requests - len(outputs)} requests missing from the results")
    if errors:
        notes.append(f"{len(errors)} requests failed: {errors[0].error}")
    return RunResult(
        system=SYSTEM,
        num_requests=len(outputs) - len(errors),
        output_tokens=sum(lens),
        elapsed_s=elapsed,
        logical_prefill_tokens=workload.logical_prefill_tokens,
        short_outputs=sum(n < out_len for n in lens) + (workload.num_requests - len(outputs)),
        notes=tuple(notes),
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
