"""The fingerprint's runner (where a job ran, e.g. a Ray job with N shards): kept in the sidecar,
never compared and not in the tag, so a job resumes anywhere and its OpenAI ids do not change."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orjson

from batchllm_cli.io.fingerprint import JobFingerprint
from batchllm_cli.io.writer import OutputWriter, ResumeState, inspect_output, sidecar_path


def test_runner_is_recorded_but_neither_compared_nor_tagged(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "prompt": "x"}\n')
    local = JobFingerprint.make(src, "tiny-llama", {"max_tokens": 8})
    on_ray = replace(local, runner="ray (auto): 4 shards on 4 GPU actors")
    assert on_ray.tag == local.tag and not on_ray.differences(local)
    out = tmp_path / "out.jsonl"
    with OutputWriter(out, ResumeState("fresh"), on_ray) as writer:
        writer.write({"id": "a", "text": "y"})
    side = orjson.loads(sidecar_path(out).read_bytes())
    assert side["runner"] == on_ray.runner
    assert JobFingerprint.from_dict(side) == on_ray
    state = inspect_output(out, local, overwrite=False)  # a local run resumes the Ray job's file
    assert state.mode == "resume" and state.records == 1
    state.done.close()
    assert "runner" not in local.to_dict()
