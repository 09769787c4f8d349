"""Synthetic benchmark workloads: specs from configs/workloads/*.toml, token-id prompts, savings.

A workload is `num_groups` groups. Every prompt starts with the same `instruction_len` tokens
(0: none); a group adds its own prefix, shared by its `degree` members, and each member adds a
distinct part. Lengths and degrees are either fixed or drawn uniformly from an inclusive
`[lo, hi]` range. Generation is deterministic (numpy, seeded) and made so that the prefix tree
is exactly the intended one: the groups differ at their first token after the instruction and
the members of a group differ at the first token of their distinct parts. The prompts are then
shuffled, as in the paper. Group g's draws depend only on (seed, g), so a workload scaled down
to fewer groups is the first groups of the full one.

Pure numpy (no torch): the planner-level parts of `bench` run anywhere.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from batchllm_cli.errors import ConfigError


MAX_REQUESTS = 10_000_000  # the generated prompts live in memory: beyond this, a typo, not a benchmark


@dataclass(frozen=True)
class IntRange:
    """A fixed length (lo == hi) or a uniform draw from lo..hi inclusive."""

    lo: int
    hi: int

    @classmethod
    def parse(cls, value: object, field: str, where: str) -> IntRange:
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value, value)
        if (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            and value[0] <= value[1]
        ):
            return cls(value[0], value[1])
        raise ConfigError(f"{where}: {field} must be an integer or [lo, hi] with lo <= hi, got {value!r}")

    @property
    def mean(self) -> float:
        return (self.lo + self.hi) / 2

    def draw(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray | int:
        if size is None:
            return int(rng.integers(self.lo, self.hi + 1))
        return rng.integers(self.lo, self.hi + 1, size=size)


@dataclass(frozen=True)
class WorkloadSpec:
    """One configs/workloads/<name>.toml."""

    name: str
    description: str
    paper: str  # the case of the paper's evaluation (or PEERS.md) this reproduces
    num_groups: int
    degree: IntRange  # members per group
    prefix_len: IntRange  # tokens of a group's own shared prefix (after the instruction)
    distinct_len: IntRange  # tokens of a member's distinct part
    output_len: int  # max_tokens of every request, EOS ignored
    instruction_len: int = 0  # tokens every prompt starts with (a second, outer prefix level)
    seed: int = 0  # draws and the shuffle
    vocab: tuple[int, int] = (1000, 32000)  # ids drawn from [vocab[0], vocab[1])

    def __post_init__(self) -> None:
        where = f"workload {self.name!r}"
        if self.num_groups < 1:
            raise ConfigError(f"{where}: num_groups must be at least 1, got {self.num_groups}")
        if self.num_groups * self.degree.hi > MAX_REQUESTS:
            raise ConfigError(f"{where}: at most {MAX_REQUESTS:,} requests (num_groups x degree), got {self.num_groups * self.degree.hi:,}")
        if self.degree.lo < 1:
            raise ConfigError(f"{where}: degree must be at least 1")
        if self.prefix_len.lo < 0 or self.instruction_len < 0 or self.output_len < 1:
            raise ConfigError(f"{where}: prefix_len, instruction_len >= 0 and output_len >= 1 required")
        if self.distinct_len.lo < 1:
            raise ConfigError(f"{where}: distinct_len must be at least 1 (a member needs its own token)")
        if self.degree.hi > 1 and self.prefix_len.lo < 1:
            raise ConfigError(f"{where}: groups of several members need prefix_len >= 1")
        lo, hi = self.vocab
        if not 0 <= lo < hi:
            raise ConfigError(f"{where}: vocab must be [lo, hi) with 0 <= lo < hi, got {list(self.vocab)}")
        if hi - lo < max(self.num_groups, self.degree.hi):
            raise ConfigError(
                f"{where}: vocab range of {hi - lo} ids cannot give {self.num_groups} groups "
                f"(or {self.degree.hi} members) distinct first tokens: widen vocab"
            )

    @property
    def expected_requests(self) -> float:
        return self.num_groups * self.degree.mean

    @property
    def max_prompt_len(self) -> int:
        return self.instruction_len + self.prefix_len.hi + self.distinct_len.hi

    def check_context(self, context: int, model: str) -> None:
        """ConfigError when the longest prompt plus output_len does not fit the model's context."""
        need = self.max_prompt_len + self.output_len
        if need > context:
            raise ConfigError(
                f"workload {self.name!r}: prompts of up to {self.max_prompt_len:,} tokens + output_len "
                f"{self.output_len:,} = {need:,} exceed {model}'s context of {context:,} tokens"
            )

    def scaled(self, num_requests: int) -> WorkloadSpec:
        """The same workload with about `num_requests` requests (fewer or more groups)."""
        if num_requests < 1:
            raise ConfigError(f"--requests must be at least 1, got {num_requests}")
        groups = max(1, round(num_requests / self.degree.mean))
        return replace(self, num_groups=groups)


@dataclass(frozen=True)
class GroupLayout:
    """The shape of one generated group: its prefix and the lengths of its members' parts."""

    prefix_len: int  # the group's own prefix, after the instruction
    distinct_lens: tuple[int, ...]  # one per member

    @property
    def degree(self) -> int:
        return len(self.distinct_lens)


@dataclass(frozen=True)
class Workload:
    """Generated prompts (shuffled input order) and the layout they were made from."""

    spec: WorkloadSpec
    prompts: tuple[np.ndarray, ...]  # each [prompt_len] int32
    group_of: np.ndarray  # [num_requests] int64: the group each prompt belongs to
    layout: tuple[GroupLayout, ...]

    @property
    def num_requests(self) -> int:
        return len(self.prompts)

    @property
    def logical_prefill_tokens(self) -> int:
        return sum(int(p.shape[0]) for p in self.prompts)

    @property
    def output_tokens(self) -> int:
        return self.num_requests * self.spec.output_len

    def prompt_lists(self) -> list[list[int]]:
        """The prompts as lists of ints (what LLM.make_requests and the HF peer take)."""
        return [p.tolist() for p in self.prompts]


@dataclass(frozen=True)
class Saving:
    """Prefill tokens of a workload: logical (sum of prompts) vs computed under one-level sharing."""

    logical_prefill_tokens: int
    processed_prefill_tokens: int
    num_shared_groups: int

    @property
    def ratio(self) -> float:
        if not self.logical_prefill_tokens:
            return 0.0
        return 1 - self.processed_prefill_tokens / self.logical_prefill_tokens


def workload_names() -> list[str]:
    """The names of the packaged workload specs, sorted."""
    folder = resources.files("batchllm_cli.configs").joinpath("workloads")
    return sorted(e.name[: -len(".toml")] for e in folder.iterdir() if e.name.endswith(".toml"))


def load_spec(name_or_path: str) -> WorkloadSpec:
    """A workload spec by packaged name (configs/workloads/<name>.toml) or by TOML file path."""
    path = Path(name_or_path).expanduser()
    if name_or_path.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"no workload file {path}")
        return parse_spec(path.read_text(), path.stem, str(path))
    entry = resources.files("batchllm_cli.configs").joinpath(f"workloads/{name_or_path}.toml")
    if not entry.is_file():
        raise ConfigError(
            f"no workload {name_or_path!r}: give one of {', '.join(workload_names())} or a .toml path"
        )
    return parse_spec(entry.read_text(), name_or_path, f"configs/workloads/{name_or_path}.toml")


def parse_spec(text: str, name: str, where: str) -> WorkloadSpec:
    """A WorkloadSpec from TOML text; `where` names the source in error messages."""
    try:
        t = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from exc
    known = {
        "description", "paper", "num_groups", "degree", "prefix_len", "distinct_len",
        "output_len", "instruction_len", "seed", "vocab",
    }  # fmt: skip
    unknown = set(t) - known
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    try:
        vocab = t.get("vocab", [1000, 32000])
        if not (isinstance(vocab, list) and len(vocab) == 2):
            raise ConfigError(f"{where}: vocab must be [lo, hi], got {vocab!r}")
        return WorkloadSpec(
            name=name,
            description=str(t.get("description", "")),
            paper=str(t.get("paper", "")),
            num_groups=_int(t, "num_groups", where),
            degree=IntRange.parse(t.get("degree", 1), "degree", where),
            prefix_len=IntRange.parse(t.get("prefix_len", 0), "prefix_len", where),
            distinct_len=IntRange.parse(t["distinct_len"], "distinct_len", where),
            output_len=_int(t, "output_len", where),
            instruction_len=_int(t, "instruction_len", where, 0),
            seed=_int(t, "seed", where, 0),
            vocab=(_int({"vocab": vocab[0]}, "vocab", where), _int({"vocab": vocab[1]}, "vocab", where)),
        )
    except KeyError as exc:
        raise ConfigError(f"{where}: missing field {exc.args[0]}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _int(t: dict, key: str, where: str, default: int | None = None) -> int:
    """t[key] as an int (KeyError when missing and no default); ConfigError for another type."""
    value = t[key] if default is None else t.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
    return value


def generate(spec: WorkloadSpec) -> Workload:
    """The prompts of `spec`, deterministic for its seed, shuffled into input order."""
    lo, hi = spec.vocab
    top = np.random.default_rng([spec.seed, 0])
    instruction = top.integers(lo, hi, size=spec.instruction_len, dtype=np.int64)
    # group g's first token (after the instruction) is firsts[g]: groups share nothing more
    firsts = top.permutation(np.arange(lo, hi, dtype=np.int64))[: spec.num_groups]
    prompts: list[np.ndarray] = []
    group_of: list[int] = []
    layout: list[GroupLayout] = []
    for g in range(spec.num_groups):
        rng = np.random.default_rng([spec.seed, 1, g])
        degree = int(spec.degree.draw(rng))
        prefix_len = int(spec.prefix_len.draw(rng))
        distinct_lens = [int(x) for x in spec.distinct_len.draw(rng, degree)]
        prefix = rng.integers(lo, hi, size=prefix_len, dtype=np.int64)
        # members' parts start with distinct tokens, so the shared prefix ends exactly here
        member_firsts = rng.choice(np.arange(lo, hi, dtype=np.int64), size=degree, replace=False)
        for k, n in enumerate(distinct_lens):
            own = rng.integers(lo, hi, size=n, dtype=np.int64)
            own[0] = member_firsts[k]
            body = np.concatenate([prefix, own])
            body[0] = firsts[g]
            prompts.append(np.concatenate([instruction, body]).astype(np.int32))
            group_of.append(g)
        layout.append(GroupLayout(prefix_len, tuple(distinct_lens)))
    order = top.permutation(len(prompts))
    return Workload(
        spec=spec,
        prompts=tuple(prompts[i] for i in order.tolist()),
        group_of=np.asarray(group_of, dtype=np.int64)[order],
        layout=tuple(layout),
    )


def analytic_saving(workload: Workload, min_prefix_tokens: int = 16) -> Saving:
    """The prefill tokens the planner's one-level sharing computes, from the layout alone.

    It replays MaximizeReuse (planner/reuse.py) on the known tree: the root holds the
    instruction node I (when instruction_len > 0), I holds one node per group of two or more
    members and one leaf per single-member group. A group splits off I, prefix I + its own,
    when (degree - 1) * prefix_len > instruction_len. What stays under I shares I alone (one
    node merges with I instead: a group then keeps I + its prefix, a leaf is a plain request).
    Without an instruction every group of two or more shares its own prefix. Prefixes shorter
    than `min_prefix_tokens` are not shared. A check that the planner builds what we meant.
    """
    spec = workload.spec
    inst = spec.instruction_len
    shared: list[tuple[int, int]] = []  # (prefix_len, members) of each shared group
    if inst == 0:
        shared = [(g.prefix_len, g.degree) for g in workload.layout if g.degree > 1]
    else:
        kept: list[GroupLayout] = []
        for g in workload.layout:
            if g.degree > 1 and (g.degree - 1) * g.prefix_len > inst:
                shared.append((inst + g.prefix_len, g.degree))
            else:
                kept.append(g)
        if len(kept) == 1 and kept[0].degree > 1:
            shared.append((inst + kept[0].prefix_len, kept[0].degree))
        elif len(kept) > 1:
            shared.append((inst, sum(g.degree for g in kept)))
    shared = [(p, d) for p, d in shared if p >= min_prefix_tokens]
    logical = workload.logical_prefill_tokens
    saved = sum(p * (d - 1) for p, d in shared)
    return Saving(logical, logical - saved, len(shared))
