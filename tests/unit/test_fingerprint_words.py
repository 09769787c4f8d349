"""How a refused resume names what changed: in the user's terms, not Python's."""

from pathlib import Path

from batchllm_cli.io.fingerprint import JobFingerprint


def test_an_option_that_was_not_given_reads_unset(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "hi"}\n')
    before = JobFingerprint.make(inp, "smollm2-135m", {"max_tokens": 8})
    after = JobFingerprint.make(inp, "smollm2-135m", {"max_tokens": 8, "repetition_penalty": 1.3})
    assert after.differences(before) == ["repetition_penalty unset -> 1.3"]
