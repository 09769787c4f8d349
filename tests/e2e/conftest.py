"""Session fixtures for end-to-end tests: the embedded SmolLM2 model, loaded once."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2_source():
    """ModelSource of the embedded SmolLM2 GGUF (config read from the file)."""
    from batchllm_cli.models.loader import resolve_model

    return resolve_model(None)


@pytest.fixture(scope="session")
def smollm2_model(smollm2_source):
    """Our float32 CPU model of the embedded GGUF, with the reference ops."""
    from batchllm_cli.models.loader import load_model
    from batchllm_kernels import get_ops

    return load_model(smollm2_source, "float32", "cpu", get_ops("cpu"))


@pytest.fixture(scope="session")
def smollm2_hf_model(smollm2_source):
    """transformers' own float32 model of the same GGUF: the reference for parity tests.

    Weights go through transformers' `load_gguf_checkpoint` (its own name map, dequantization
    and q/k un-permutation), not through our loader. (`from_pretrained(gguf_file=...)` does the
    same but needs `accelerate`, which is not a dependency.)
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(smollm2_source.hf_config, dtype=torch.float32)
    parsed = load_gguf_checkpoint(str(smollm2_source.path), return_tensors=True, model_to_load=model)
    model = model.to_empty(device="cpu")
    missing, unexpected = model.load_state_dict(parsed["tensors"], strict=False)
    model.tie_weights()
    assert not unexpected and all("lm_head" in m for m in missing), (missing, unexpected)
    model.model.rotary_emb.__init__(model.config)  # its inv_freq buffer was left empty on meta
    model.gguf_config = parsed["config"]
    return model.eval()
