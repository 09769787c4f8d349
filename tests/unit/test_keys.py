"""KeySet (io/index.py): duplicate ids naming both lines, exact membership, the lines a resumed
output already holds; the same answers in memory and spilled to partition files."""

from __future__ import annotations

import os
import random

import pytest

from batchllm_cli.io.index import KeySet, duplicates, key_of, lines_in


@pytest.fixture(params=[None, 7], ids=["memory", "spilled"])
def make_keys(request: pytest.FixtureRequest):
    """KeySet factory: default memory, or spilling after 7 entries (every test runs both)."""
    made: list[KeySet] = []

    def make() -> KeySet:
        keys = KeySet() if request.param is None else KeySet(memory_entries=request.param)
        made.append(keys)
        return keys

    yield make
    for keys in made:
        keys.close()


def _filled(keys: KeySet, ids: list[str | None]) -> KeySet:
    for line, rid in enumerate(ids, start=1):
        keys.add(key_of(rid, line), line)
    return keys


def test_duplicates_name_both_lines(make_keys) -> None:
    """Each repeated key is (line of its first use, repeating line), ordered by repeating line."""
    keys = _filled(make_keys(), ["a", "b", "c", "a", None, "b", "a", None, "d", "e"])
    assert duplicates(keys) == ([(1, 4), (2, 6), (1, 7)], 3)
    assert duplicates(keys, limit=2) == ([(1, 4), (2, 6)], 3)
    assert len(keys) == 10


def test_membership_and_kinds_of_keys(make_keys) -> None:
    """Membership is exact; an id key never equals a line-number key, even for id "5" vs line 5."""
    keys = make_keys()
    for i in range(20):
        keys.add(key_of(f"x{i}", i + 1), i + 1)
    keys.add(key_of(None, 5), 21)
    assert key_of("x3", 99) in keys and key_of(None, 5) in keys
    assert key_of("5", 5) not in keys and key_of(None, 1) not in keys and key_of("y", 1) not in keys
    assert key_of("5", 1) != key_of(None, 5) and key_of("l5", 1) != key_of(None, 5)


def test_planted_duplicates_among_many_keys(make_keys) -> None:
    """In 5,000 keys, exactly the planted duplicates are found, with their lines."""
    planted = {1_000: 17, 3_000: 2_500, 4_999: 0}  # repeating index -> index it repeats
    keys = _filled(make_keys(), [f"id-{planted.get(i, i)}" for i in range(5_000)])
    assert duplicates(keys) == ([(18, 1_001), (2_501, 3_001), (1, 5_000)], 3)


def test_many_duplicates_keep_the_first_ones_by_line(make_keys) -> None:
    """With more repeats than the limit, the ones named are those of the earliest lines."""
    keys = _filled(make_keys(), ["same"] * 30 + ["other"] * 3)
    named, total = duplicates(keys, limit=5)
    assert total == 29 + 2
    assert named == [(1, 2), (1, 3), (1, 4), (1, 5), (1, 6)]


def test_empty() -> None:
    with KeySet() as keys:
        assert duplicates(keys) == ([], 0) and key_of("a", 1) not in keys and len(keys) == 0
        assert 3 not in lines_in(keys, keys, max_line=0)


def test_lines_in_marks_the_lines_whose_key_the_other_set_holds(make_keys) -> None:
    """The input lines whose record is in the output: by key, whatever the output's order."""
    rng = random.Random(3)
    ids = [f"r{i}" if i % 11 else None for i in range(300)]  # some lines known by number only
    inputs = _filled(make_keys(), ids)
    done_lines = set(rng.sample(range(1, 301), 120))
    order = list(done_lines)
    rng.shuffle(order)
    output = make_keys()
    for n, line in enumerate(order, start=1):
        output.add(key_of(ids[line - 1], line), n)  # the output's own line numbers differ
    output.add(key_of("not-in-the-input", 0), 999)
    marked = lines_in(inputs, output, max_line=300)
    assert {line for line in range(1, 302) if line in marked} == done_lines
    assert 10_000 not in marked


def test_spill_files_are_removed_on_close(tmp_path, monkeypatch) -> None:
    """Spilled partitions live in a temporary directory that close() removes."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    with KeySet(memory_entries=4) as keys:
        _filled(keys, [f"k{i}" for i in range(100)])
        assert keys.spilled
        spill_dirs = list(tmp_path.glob("batchllm-keys-*"))
        assert len(spill_dirs) == 1 and any(spill_dirs[0].iterdir())
        assert duplicates(keys) == ([], 0) and key_of("k99", 0) in keys
    assert not spill_dirs[0].exists() and len(keys) == 0


def test_a_spill_removes_folders_of_processes_that_are_gone(tmp_path, monkeypatch) -> None:
    """kill -9 skips close(): the next process that spills removes the dead owner's folder and
    leaves a running owner's folder (and anything not named like a spill folder) alone."""
    import subprocess
    import sys
    import tempfile

    from batchllm_cli.io.index import SPILL_PREFIX

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = tmp_path / f"{SPILL_PREFIX}{gone.stdout.strip()}-abc"
    live = tmp_path / f"{SPILL_PREFIX}{os.getppid()}-def"
    other = tmp_path / f"{SPILL_PREFIX}notapid-x"
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "0").write_bytes(b"x" * 20)
    with _filled(KeySet(memory_entries=3), ["a", "b", "c", "d"]) as keys:
        assert keys.spilled
        mine = [p for p in tmp_path.iterdir() if p.name.startswith(f"{SPILL_PREFIX}{os.getpid()}-")]
        assert len(mine) == 1
        assert not dead.exists() and live.exists() and other.exists()
    assert not mine[0].exists()  # close() removes its own folder
