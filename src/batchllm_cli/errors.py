"""The one exception hierarchy of batchllm; the CLI maps each class to an exit code."""


class BatchLLMError(Exception):
    """Base of every error a user can act on; its message says what to do."""

    exit_code = 1


class InputError(BatchLLMError):
    """The input file cannot be used (missing, unreadable, duplicate ids, bad lines in --strict)."""

    exit_code = 2


class OutputError(BatchLLMError):
    """The output cannot be written or resumed (unwritable, written from other input)."""

    exit_code = 3


class ModelError(BatchLLMError):
    """The model cannot be found, read or built."""

    exit_code = 4


class ConfigError(BatchLLMError):
    """A setting is out of range or contradicts another."""

    exit_code = 5


class PlanError(BatchLLMError):
    """A saved plan does not belong to this input or settings."""

    exit_code = 6


class CapacityError(BatchLLMError):
    """A request can never fit in the KV cache as configured."""

    exit_code = 7
