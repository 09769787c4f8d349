"""The engine: KV block pool, scheduler, model runner, sampler, stop conditions and the LLM API.

`from batchllm_cli.engine import LLM` loads lazily, so that importing the pure-Python parts
(scheduler, simulate) does not pull in torch and transformers.
"""

from typing import Any

__all__ = ["LLM", "EngineProgress"]


def __getattr__(name: str) -> Any:
    if name == "LLM":
        from batchllm_cli.engine.llm import LLM

        return LLM
    if name == "EngineProgress":
        from batchllm_cli.engine.engine import EngineProgress

        return EngineProgress
    raise AttributeError(name)
