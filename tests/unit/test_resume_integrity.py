"""Resume integrity on the echo backend: exactly one record per distinct id, nothing written by
a run that fails while starting, --overwrite that no crash point can mix with another job, the
output lock, full disks, and inputs that are files batchllm writes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from batchllm_cli.errors import ModelError, OutputError, PlanError
from batchllm_cli.io import writer as writer_mod
from batchllm_cli.io.echo import EchoBackend
from batchllm_cli.io.formats import dumps_line
from batchllm_cli.io.job import JobInterrupted, run_job
from batchllm_cli.io.lock import OutputLock, lock_path
from batchllm_cli.io.writer import sidecar_path
from io_helpers import Factory, Seen, job_options, jsonl, plain_record, read_records, run_echo, sidecar

HERE = Path(__file__).resolve().parent


def _ids(out: Path) -> list[str]:
    return [r["id"] for r in read_records(out)]


def test_resume_counts_distinct_ids_and_removes_repeated_records(tmp_path: Path) -> None:
    """An output of 590 distinct ids plus 10 repeats (two runs at once) is not "600 of 600":
    the repeats are removed (the first of each kept), the 10 missing ids run, and the sidecar
    says complete with 600 records, one per id."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"p {i}"} for i in range(600)])
    out = tmp_path / "out.jsonl"
    opts = job_options(inp, out)
    kept = [plain_record(f"r{i}", "old") for i in range(590)]
    lines = b"".join(dumps_line(r) for r in kept) + b"".join(dumps_line(plain_record(f"r{i}", "dup")) for i in range(10))
    out.write_bytes(lines)
    sidecar_path(out).write_bytes(orjson.dumps({**opts.fingerprint.to_dict(), "complete": False, "records": 600}))

    seen = Seen()
    summary = run_echo(opts, seen)
    assert sorted(seen.ids) == sorted(f"r{i}" for i in range(590, 600))
    assert summary.resumed == 590 and summary.completed == 10
    ids = _ids(out)
    assert sorted(ids) == sorted(f"r{i}" for i in range(600)) and len(ids) == 600
    assert all(r["text"] == "old" for r in read_records(out)[:590])
    assert (sidecar(out)["complete"], sidecar(out)["records"]) == (True, 600)


def test_complete_output_with_repeats_is_repaired_without_running(tmp_path: Path) -> None:
    """Every id answered but some twice: the repeats go, nothing runs, the sidecar is complete."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": k, "prompt": "p"} for k in "abc"])
    out = tmp_path / "out.jsonl"
    opts = job_options(inp, out)
    out.write_bytes(b"".join(dumps_line(plain_record(k)) for k in "abcab") + b'{"id": "c", "te')
    sidecar_path(out).write_bytes(orjson.dumps({**opts.fingerprint.to_dict(), "complete": False, "records": 5}))
    factory = Factory()
    summary = run_job(opts, factory)
    assert factory.calls == 0 and summary.resumed == 3
    assert _ids(out) == ["a", "b", "c"]
    assert (sidecar(out)["complete"], sidecar(out)["records"]) == (True, 3)


def test_a_run_that_fails_while_starting_writes_nothing(tmp_path: Path) -> None:
    """A backend that fails before the first record (a wrong model) leaves no output, sidecar or
    lock behind; with --overwrite, the old output and sidecar stay byte for byte."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    out = tmp_path / "out.jsonl"

    def broken() -> None:
        raise ModelError("no model 'typo'")

    with pytest.raises(ModelError):
        run_job(job_options(inp, out), broken)  # type: ignore[arg-type]
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]

    run_echo(job_options(inp, out))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ModelError):
        run_job(job_options(inp, out, {"temperature": 1.0}, overwrite=True), broken)  # type: ignore[arg-type]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# A child process that starts an --overwrite job and dies (os._exit, as kill -9) at one step.
_CRASH_CHILD = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {here!r})
    from pathlib import Path
    from batchllm_cli.io import writer
    from io_helpers import job_options, run_echo

    step, inp, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    real = os

    class Os:
        def __getattr__(self, name):
            return getattr(real, name)

        def open(self, path, flags, *mode):
            if step == "before-truncate":
                real._exit(9)
            fd = real.open(path, flags, *mode)
            if step == "after-truncate":
                real._exit(9)
            return fd

        def replace(self, a, b):
            if step == "sidecar-temp-written":
                real._exit(9)
            real.replace(a, b)
            if step == "sidecar-replaced":
                real._exit(9)

        def write(self, fd, data):
            n = real.write(fd, data)
            if step == "first-record":
                real._exit(9)
            return n

    writer.os = Os()
    run_echo(job_options(inp, out, {{"temperature": 1.0}}, overwrite=True))
    real._exit(0)
""")


@pytest.mark.parametrize("step", ["before-truncate", "after-truncate", "sidecar-temp-written", "sidecar-replaced",
                                  "first-record"])
def test_overwrite_killed_at_any_step_never_resumes_the_old_job(tmp_path: Path, step: str) -> None:
    """--overwrite of job A's output by job B, killed at each step of the switch: the next plain
    run of B never takes A's records as its own (it refuses, or ends with B's records only), and
    a plain run of A never takes B's."""
    a = jsonl(tmp_path / "a.jsonl", [{"id": f"old{i}", "prompt": "old"} for i in range(5)])
    b = jsonl(tmp_path / "b.jsonl", [{"id": f"new{i}", "prompt": f"new {i}"} for i in range(3)])
    out = tmp_path / "out.jsonl"
    run_echo(job_options(a, out))
    child = _CRASH_CHILD.format(here=str(HERE))
    proc = subprocess.run([sys.executable, "-c", child, step, str(b), str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 9, proc.stderr
    try:
        summary = run_echo(job_options(b, out, {"temperature": 1.0}))
    except OutputError as exc:  # the old job's output, untouched: refused, not resumed
        assert step == "before-truncate" and "--overwrite" in str(exc)
        assert _ids(out) == [f"old{i}" for i in range(5)]
        summary = run_echo(job_options(b, out, {"temperature": 1.0}, overwrite=True))
    assert sorted(_ids(out)) == ["new0", "new1", "new2"], step
    assert summary.resumed == (1 if step == "first-record" else 0)
    assert sidecar(out)["complete"] is True


def test_second_run_on_an_output_is_refused_at_once_naming_the_first(tmp_path: Path) -> None:
    """While one run holds the output's lock (here: a child process), another is refused at once
    with the holder's pid; after the holder is killed with kill -9 the lock is free again. The
    lock file is gone after a clean run."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    out = tmp_path / "out.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom batchllm_cli.io.lock import OutputLock\n"
         "OutputLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        factory = Factory()
        start = time.monotonic()
        with pytest.raises(OutputError, match=f"another batchllm run \\(pid {holder.pid}, started"):
            run_job(job_options(inp, out), factory)
        assert time.monotonic() - start < 5 and factory.calls == 0 and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert lock_path(out).exists()  # left by the kill, but no longer locked
    run_echo(job_options(inp, out))
    assert _ids(out) == ["a"] and not lock_path(out).exists()


def test_a_lock_released_while_waiting_is_taken_again(tmp_path: Path) -> None:
    """The lock file a holder removed on release is not locked by the next run: it takes a new one."""
    out = tmp_path / "out.jsonl"
    first = OutputLock(out).acquire()
    first.release()
    with OutputLock(out) as second:
        assert lock_path(out).exists() and str(os.getpid()) in lock_path(out).read_text()
        with pytest.raises(OutputError, match=f"pid {os.getpid()}"):
            OutputLock(out).acquire()
    assert not lock_path(out).exists() and second is not None


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EDQUOT])
def test_full_or_read_only_output_is_one_output_error_and_resumable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     err: int) -> None:
    """A write that fails (disk full, read-only, quota) after some records: one OutputError line
    naming the path (exit 3); the records written stay, and the next run finishes the job with
    one record per id."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"p {i}"} for i in range(20)])
    out = tmp_path / "out.jsonl"
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] > 7:
            real_write(fd, bytes(data)[:5])  # a torn line, as a full disk can leave
            raise OSError(err, os.strerror(err))
        return real_write(fd, data)

    monkeypatch.setattr(writer_mod.os, "write", failing_write)
    with pytest.raises(OutputError) as exc:
        run_echo(job_options(inp, out))
    assert exc.value.exit_code == 3 and str(out) in str(exc.value) and "\n" not in str(exc.value)
    assert os.strerror(err) in str(exc.value)
    monkeypatch.setattr(writer_mod.os, "write", real_write)
    assert sidecar(out)["complete"] is False
    summary = run_echo(job_options(inp, out))
    assert summary.resumed == 7 and summary.torn_bytes == 5
    assert sorted(_ids(out)) == sorted(f"r{i}" for i in range(20))


def test_an_unwritable_output_directory_fails_before_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only place for OUTPUT is refused when the lock is taken, before the backend starts."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    real_open = os.open

    def read_only(path, flags, *mode):  # type: ignore[no-untyped-def]
        if str(path).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *mode)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "open", read_only)
    factory = Factory()
    with pytest.raises(OutputError, match="Read-only file system") as exc:
        run_job(job_options(inp, tmp_path / "ro" / "out.jsonl"), factory)
    assert str(tmp_path / "ro" / "out.jsonl") in str(exc.value) and factory.calls == 0


@pytest.mark.parametrize("name", ["out.jsonl.batchllm.json", "out.jsonl.batchllm.lock",
                                  "out.jsonl.batchllm.json.tmp", "out.jsonl.batchllm.json.x1y2.tmp"])
def test_an_input_that_batchllm_writes_for_the_output_is_refused(tmp_path: Path, name: str) -> None:
    """INPUT named like the output's sidecar, lock or temp files is refused and left as it is."""
    inp = jsonl(tmp_path / name, [{"id": "a", "prompt": "x"}])
    before = inp.read_bytes()
    with pytest.raises(OutputError, match="a file batchllm writes for the output"):
        run_echo(job_options(inp, tmp_path / "out.jsonl"))
    assert inp.read_bytes() == before


def test_a_symlink_at_the_sidecar_or_its_old_temp_name_is_not_followed(tmp_path: Path) -> None:
    """The sidecar is written through a private temp file and renamed: links planted at the old
    predictable temp name or at the sidecar itself do not get their targets overwritten."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    out = tmp_path / "out.jsonl"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, tmp_path / "out.jsonl.batchllm.json.tmp")
    os.symlink(victim, sidecar_path(out))
    run_echo(job_options(inp, out))
    assert victim.read_text() == "keep me"
    assert not sidecar_path(out).is_symlink() and sidecar(out)["complete"] is True


def test_a_stop_signal_is_honoured_while_reading(tmp_path: Path) -> None:
    """A stop asked for during the checks of a big input stops the job within a few hundred lines,
    before the backend starts and with nothing written."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": "p"} for i in range(20_000)])
    out = tmp_path / "out.jsonl"
    looks = {"n": 0}

    def stop_soon() -> str | None:
        looks["n"] += 1
        return "SIGTERM" if looks["n"] >= 3 else None

    factory = Factory()
    with pytest.raises(JobInterrupted) as exc:
        run_job(job_options(inp, out), factory, should_stop=stop_soon)
    assert exc.value.exit_code == 143 and factory.calls == 0 and not out.exists()


class _PlanOfAnotherInput(EchoBackend):
    """Reads every record (so the bad lines' error records are made), then finds the plan wrong."""

    def prepare(self, records):  # type: ignore[no-untyped-def]
        for _ in records:
            pass
        raise PlanError("the plan does not belong to this input")


def test_overwrite_with_a_plan_found_wrong_after_reading_leaves_the_old_output(tmp_path: Path) -> None:
    """--overwrite, an input with bad lines, and an argument found wrong only after the input was
    read (a plan of another input): the old output and its sidecar stay byte for byte (the bad
    lines' records were held, not written); with a good backend the job then runs."""
    old = jsonl(tmp_path / "old.jsonl", [{"id": f"o{i}", "prompt": "old"} for i in range(4)])
    out = tmp_path / "out.jsonl"
    run_echo(job_options(old, out))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    new = jsonl(tmp_path / "new.jsonl", [b"{bad json", {"id": "n1", "prompt": "fine"}, b"[1]"])
    before["new.jsonl"] = new.read_bytes()
    with pytest.raises(PlanError):
        run_job(job_options(new, out, {"temperature": 1.0}, overwrite=True), _PlanOfAnotherInput)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    run_echo(job_options(new, out, {"temperature": 1.0}, overwrite=True))
    recs = read_records(out)
    assert len(recs) == 3 and sum("error" in r for r in recs) == 2


def test_a_stop_signal_is_honoured_while_tokenizing(tmp_path: Path) -> None:
    """A backend that reads the whole input in prepare (as the engine tokenizes): a stop asked for
    then ends the job within a few hundred lines, with nothing written."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": "p"} for i in range(20_000)])
    out = tmp_path / "out.jsonl"
    seen = {"lines": 0, "looks": 0}

    class Counting(EchoBackend):
        def prepare(self, records):  # type: ignore[no-untyped-def]
            def counted():  # type: ignore[no-untyped-def]
                for item in records:
                    seen["lines"] += 1
                    yield item
            return super().prepare(counted())

    def stop_in_pass_two() -> str | None:
        seen["looks"] += 1
        return "SIGINT" if seen["lines"] > 1000 else None

    with pytest.raises(JobInterrupted) as exc:
        run_job(job_options(inp, out), lambda: Counting(max_model_len=100), should_stop=stop_in_pass_two)
    assert exc.value.exit_code == 130 and seen["lines"] < 1000 + 2 * 256 and not out.exists()


@pytest.fixture
def small_fs(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 64 KiB tmpfs (root only: skipped where mounting is not allowed); unmounted afterwards."""
    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True, capture_output=True)


def test_a_really_full_and_then_read_only_filesystem(tmp_path: Path, small_fs: Path) -> None:
    """On a real 64 KiB tmpfs: the disk fills mid-job (ENOSPC) -> one OutputError naming OUTPUT;
    remounted read-only -> the next run fails the same way without touching the records; with room
    again the job resumes to one record per id."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"{i} " + "x" * 500} for i in range(300)])
    out = small_fs / "out.jsonl"
    with pytest.raises(OutputError) as full:
        run_echo(job_options(inp, out))
    assert str(out) in str(full.value) and "No space left on device" in str(full.value)
    assert "\n" not in str(full.value) and full.value.exit_code == 3
    kept = out.read_bytes()  # whole records, and maybe the torn start of one (a full disk's)
    assert 0 < kept.count(b"\n") < 300
    _remount(small_fs, "ro")
    with pytest.raises(OutputError, match="Read-only file system") as ro:
        run_echo(job_options(inp, out))
    assert str(out) in str(ro.value) and out.read_bytes() == kept
    _remount(small_fs, "rw,size=1m")
    summary = run_echo(job_options(inp, out))
    assert summary.resumed == kept.count(b"\n")
    assert sorted(_ids(out)) == sorted(f"r{i}" for i in range(300)) and sidecar(out)["complete"] is True
