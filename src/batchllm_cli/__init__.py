"""batchllm: offline batch LLM inference with global prefix sharing."""

__version__ = "0.1.0"

__all__ = ["__version__"]
