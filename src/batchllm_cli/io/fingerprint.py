"""The job fingerprint: what an output file was made from (input bytes, model, settings).

It is kept beside the output (OUTPUT + ".batchllm.json") so that a later run with the same
arguments can tell whether it may resume the file or must refuse. Settings that change what a
request's text can be (sampling defaults, dtype, model) are in it; settings that only change
speed (token budget, prefix sharing, device of the same dtype) are not.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchllm_cli.errors import ConfigError, OutputError
from batchllm_cli.io.reader import open_input

# 2: ids keep their JSON type (an output of version 1 named the int id 7 "7": resuming it would
# run such lines again)
FINGERPRINT_VERSION = 2


def file_sha256(path: str | Path) -> tuple[str, int]:
    """(hex SHA-256, size in bytes) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open_input(path) as f:
        while chunk := f.read(2**20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


INT64_MAX = 2**63 - 1


def check_settings(settings: dict[str, Any]) -> None:
    """ConfigError for a setting the sidecar (JSON) cannot hold exactly: an integer beyond 64
    bits, a float that is not finite (inf would come back as null, and never match again)."""
    for name, value in settings.items():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            bad = (isinstance(item, int) and not isinstance(item, bool) and not -INT64_MAX <= item <= INT64_MAX) or (
                isinstance(item, float) and not math.isfinite(item))
            if bad:
                raise ConfigError(f"--{name.replace('_', '-')} {item} is out of range (a finite number "
                                  f"within +-{INT64_MAX:,})")


@dataclass(frozen=True)
class JobFingerprint:
    """The input and settings an output file belongs to."""

    input_sha256: str
    input_size: int
    model: str  # a preset name, or the resolved path of a model file or directory
    settings: tuple[tuple[str, Any], ...]  # sorted (name, value) pairs
    # where the job ran ("ray (auto): 8 shards on 8 GPU actors"), for people: never compared
    # (a job resumes on another cluster or locally) and not part of the tag
    runner: str = ""

    @classmethod
    def make(cls, input_path: str | Path, model: str, settings: dict[str, Any]) -> "JobFingerprint":
        check_settings(settings)
        sha, size = file_sha256(input_path)
        return cls(sha, size, model, tuple(sorted(settings.items())))

    @property
    def tag(self) -> str:
        """A short id of this job (seeds the ids of OpenAI output objects)."""
        doc = self.to_dict()
        doc.pop("runner", None)
        return hashlib.sha256(repr(doc).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        doc = {
            "version": FINGERPRINT_VERSION,
            "input": {"sha256": self.input_sha256, "size": self.input_size},
            "model": self.model,
            "settings": dict(self.settings),
        }
        if self.runner:
            doc["runner"] = self.runner
        return doc

    @classmethod
    def from_dict(cls, doc: Any) -> "JobFingerprint":
        """Reads `to_dict` output; OutputError when it is not a fingerprint of this version."""
        try:
            if doc["version"] != FINGERPRINT_VERSION:
                raise OutputError(f"fingerprint version {doc['version']} is not {FINGERPRINT_VERSION}")
            settings = doc["settings"]
            return cls(
                str(doc["input"]["sha256"]),
                int(doc["input"]["size"]),
                str(doc["model"]),
                tuple(sorted((str(k), v) for k, v in settings.items())),
                str(doc.get("runner", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise OutputError(f"damaged fingerprint ({type(exc).__name__}: {exc})") from exc

    def differences(self, other: "JobFingerprint") -> list[str]:
        """What differs from `other` (the fingerprint on disk), in words; empty when they match."""
        out = []
        if (self.input_sha256, self.input_size) != (other.input_sha256, other.input_size):
            out.append("the input file's content")
        if self.model != other.model:
            out.append(f"model {other.model} -> {self.model}")
        mine, theirs = dict(self.settings), dict(other.settings)
        for name in sorted(set(mine) | set(theirs)):
            if mine.get(name) != theirs.get(name):
                out.append(f"{name} {_shown(theirs.get(name))} -> {_shown(mine.get(name))}")
        return out


def _shown(value: Any) -> str:
    """A setting as a user wrote it: `unset` for an option that was not given."""
    return "unset" if value is None else str(value)
