"""Block tables kept on the device (engine/block_tables.py): a row per live sequence, written
once; a step sends row indices only. Checked on the CPU, where the same torch code runs."""

from __future__ import annotations

import numpy as np
import torch

from batchllm_cli.engine.block_tables import DeviceBlockTables


def test_rows_are_written_once_and_reused_after_release():
    t = DeviceBlockTables(8, torch.device("cpu"))
    a, b = (1, 2, 3), (4,)
    rows = t.rows(["a", "b"], [a, b])
    assert t.writes == 2 and len(t) == 2
    assert t.gather(torch.from_numpy(rows), 3).tolist() == [[1, 2, 3], [4, 0, 0]]
    again = t.rows(["b", "a"], [b, a])  # known: nothing travels
    assert again.tolist() == rows[::-1].tolist() and t.writes == 2
    t.release("a")
    (c_row,) = t.rows(["c"], [(7, 7)]).tolist()
    assert c_row == rows[0] and t.writes == 3  # a's row, written for c
    assert t.gather(torch.tensor([c_row], dtype=torch.int32), 2).tolist() == [[7, 7]]
    (b_row,) = t.rows(["b"], [(5, 6)]).tolist()  # same key, another table (a new job's request 'b')
    assert b_row == rows[1] and t.writes == 4
    assert t.gather(torch.tensor([b_row]), 2).tolist() == [[5, 6]]
    many = t.rows([f"k{i}" for i in range(40)], [(i,) for i in range(40)])  # past the first allocation
    assert len(set(many.tolist())) == 40 and t.gather(torch.from_numpy(many), 1)[:, 0].tolist() == list(range(40))
    t.reset()
    assert len(t) == 0 and t.rows(["a"], [a]).tolist()[0] in set(rows.tolist()) | set(many.tolist()) | {c_row}


def test_request_indices_as_an_array_find_their_rows_at_once():
    t = DeviceBlockTables(8, torch.device("cpu"))
    by_list = t.rows([3, 0, -1], [(1, 2), (3,), (9, 9, 9)])  # a prefix key (-1) among them
    assert t.writes == 3
    by_array = t.rows(np.array([0, 3]), [(3,), (1, 2)])
    assert by_array.tolist() == [by_list[1], by_list[0]] and t.writes == 3  # known: nothing written
    mixed = t.rows(np.array([3, 70]), [(1, 2), (4, 5)])  # 70 is new: written, past the first mirror size
    assert mixed[0] == by_list[0] and t.writes == 4
    assert t.gather(torch.from_numpy(mixed), 2).tolist() == [[1, 2], [4, 5]]
    t.release(3)
    again = t.rows(np.array([3]), [(6,)])  # released: written again, not its old row's contents
    assert t.writes == 5 and t.gather(torch.from_numpy(again), 1).tolist() == [[6]]
    t.reset()
    t.rows(np.array([0]), [(7,)])
    assert t.writes == 6  # a new job: known keys are forgotten


def test_a_run_writes_each_sequence_once_and_frees_every_row():
    from batchllm_cli.engine.llm import LLM
    from batchllm_cli.types import SamplingParams

    llm = LLM("tiny-llama", device="cpu", token_budget=32, num_kv_blocks=120)
    rng = np.random.default_rng(1)
    prefixes = [rng.integers(5, 200, 40).tolist() for _ in range(3)]
    prompts = [p + rng.integers(5, 200, int(rng.integers(2, 20))).tolist() for p in prefixes for _ in range(4)]
    requests = llm.make_requests(prompts, SamplingParams(max_tokens=5, ignore_eos=True))
    plan = llm.plan(requests)
    shared = sum(1 for g in plan.groups if g.prefix_len)
    assert shared == 3
    done = list(llm.stream(requests, plan))
    assert len(done) == len(requests)
    tables = llm.runner.block_tables
    assert tables.writes == len(requests) + shared  # each own table and each prefix once, not per step
    assert len(tables) == 0  # every finished sequence gave its row back
