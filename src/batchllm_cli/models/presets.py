"""Model presets from configs/models/*.toml: the embedded SmolLM2 and random-weight shapes."""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from batchllm_cli.errors import ModelError

DEFAULT_PRESET = "smollm2-135m"
ALIASES = {"smollm2": DEFAULT_PRESET}


@dataclass(frozen=True)
class Preset:
    """One configs/models/<name>.toml."""

    name: str
    description: str
    source: Literal["embedded", "random"]
    hf_config: dict[str, Any]  # transformers config fields, model_type included

    def make_hf_config(self) -> Any:
        """The transformers config object of this shape (no file access, no download)."""
        from transformers import AutoConfig

        fields = dict(self.hf_config)
        return AutoConfig.for_model(fields.pop("model_type"), **fields)


@dataclass(frozen=True)
class PresetInfo:
    """What `batchllm models` shows for a preset."""

    name: str
    description: str
    source: str
    num_params: int


@functools.cache
def load_presets() -> dict[str, Preset]:
    """Every preset, by name (the TOML file's stem), sorted by name."""
    folder = resources.files("batchllm_cli.configs").joinpath("models")
    presets = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".toml"):
            continue
        name = entry.name[: -len(".toml")]
        try:
            table = tomllib.loads(entry.read_text())
            presets[name] = Preset(name, table["description"], table["source"], table["hf_config"])
        except (tomllib.TOMLDecodeError, KeyError) as exc:
            raise ModelError(f"model preset {entry.name} is malformed: {exc}") from exc
    return presets


def get_preset(name: str) -> Preset | None:
    """The preset called `name` (or an alias of it), None if there is none."""
    return load_presets().get(ALIASES.get(name, name))


def list_presets() -> list[PresetInfo]:
    """Name, description, source and parameter count of every preset, for `batchllm models`."""
    from types import SimpleNamespace

    from batchllm_cli.models.config import ModelConfig

    # the TOML's fields as they are (what make_hf_config adds are defaults the shape does not
    # use): no transformers import, so `batchllm models` prints at once
    return [
        PresetInfo(p.name, p.description, p.source, ModelConfig.from_hf(SimpleNamespace(**p.hf_config)).num_params())
        for p in load_presets().values()
    ]
