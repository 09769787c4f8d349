"""The scheduler's per-request columns (engine/columns.py): round-robin decodes under a budget,
the tokens issued ahead of those applied, and the requests that leave."""

from __future__ import annotations

import numpy as np

from batchllm_cli.engine.columns import RequestColumns, pick
from batchllm_cli.engine.state import GroupState, RequestState
from batchllm_cli.types import Request, SamplingParams


def _columns(n: int, max_tokens: int = 3) -> tuple[RequestColumns, list[RequestState]]:
    params = SamplingParams(max_tokens=max_tokens)
    requests = [Request(i, i, np.arange(10 + i, dtype=np.int32), params) for i in range(n)]
    group = GroupState(position=0, prefix_len=4, members=tuple(range(n)), prefix_ids=np.arange(4, dtype=np.int32))
    cols = RequestColumns(requests, [group])
    states = [RequestState(request=r, group=group, own_blocks=[10 + r.index]) for r in requests]
    for s in states:
        cols.start(s)
    return cols, states


def test_static_columns_and_tables_come_from_the_requests_and_groups():
    cols, states = _columns(3)
    assert cols.prompt_len.tolist() == [10, 11, 12] and cols.max_tokens.tolist() == [3, 3, 3]
    assert cols.prefix_len.tolist() == [4, 4, 4] and cols.group.tolist() == [0, 0, 0]
    assert cols.eos_only.all() and pick(cols.tables, [2, 0]) == [(12,), (10,)]
    assert pick(cols.states, [1]) == [states[1]]


def test_decodes_go_round_robin_and_skip_a_request_whose_last_token_is_in_flight():
    cols, _ = _columns(4, max_tokens=2)
    cols.issue(np.array([0, 1, 2, 3]), first=np.array([0, 1, 2, 3]))  # four prompts draw their first token
    assert cols.issued.tolist() == [1, 1, 1, 1] and cols.sample_row.tolist() == [0, 1, 2, 3]
    assert cols.take_decodes(3).tolist() == [0, 1, 2]  # over budget: the next step starts at 3
    assert cols.decoding.tolist() == [3, 0, 1, 2]
    cols.issue(np.array([0, 1, 2]), first=np.zeros(0, np.int64))  # their second (last) token is drawn
    assert cols.sample_row[:3].tolist() == [0, 1, 2] and (cols.issued - cols.applied).tolist() == [2, 2, 2, 1]
    assert cols.take_decodes(3).tolist() == [3]  # 0, 1, 2 have drawn max_tokens already


def test_applied_tokens_and_finished_requests():
    cols, _ = _columns(3)
    cols.issue(np.array([0, 1, 2]), first=np.array([0, 1, 2]))
    cols.apply(np.array([2, 0]), np.array([7, 9]))
    assert cols.applied.tolist() == [1, 0, 1] and cols.last.tolist() == [9, 0, 7]
    cols.finish(1)
    assert cols.done.tolist() == [False, True, False] and cols.states[1] is None and cols.tables[1] == ()
    cols.drop_finished()
    assert cols.decoding.tolist() == [0, 2]
