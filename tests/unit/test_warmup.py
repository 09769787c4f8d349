"""The start-up warm-up's dry run: which CUDA graph keys and eager step shapes a job will need.

The keys come from the same function the runner replays by (ModelRunner.graph_key), so what
the dry run lists must be exactly what the real run asks for: checked here on a CPU by giving
the runner stand-in graphs (host logic only) and recording every step a real run launches.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from batchllm_cli.engine.cuda_graphs import DecodeGraphs
from batchllm_cli.engine.warmup import StepShapes, step_shapes
from batchllm_kernels.metadata import HostLayout, int_specialization
from graph_stand_ins import EagerMixed


def test_int_specialization_classes():
    assert [int_specialization(v) for v in (1, 16, 32, 17, 2, 0)] == [1, 16, 16, 0, 0, 16]


def test_specialization_tells_apart_what_triton_compiles_for():
    def spec(layout):
        return layout.specialization(4, 2, torch.device("cpu"))

    decode = HostLayout.build(16, [1, 1], [3, 4], [[1], [2]], [-1, -1], [], [])
    decode_more = HostLayout.build(16, [1, 1, 1], [3, 4, 9], [[1], [2], [3]], [-1, -1, -1], [], [])
    mixed = HostLayout.build(16, [1, 5], [3, 0], [[1], [2]], [-1, -1], [], [])
    assert spec(decode) == spec(decode_more)  # 2 and 3 are one class, same decode launch
    assert spec(decode) != spec(mixed)
    sixteen = HostLayout.build(16, [1] * 16, [3] * 16, [[1]] * 16, [-1] * 16, [], [])
    assert spec(sixteen) != spec(decode)  # 16 decodes: a multiple of 16
    # the same counts, but one long context: the decode kernel splits its keys (another variant)
    long_ctx = HostLayout.build(16, [1, 1], [3, 4000], [[1], list(range(251))], [-1, -1], [], [])
    assert spec(long_ctx)[:6] == spec(decode)[:6] and spec(long_ctx) != spec(decode)
    # the same counts and launch, but block tables 16 wide: the kernels take the tables' row
    # stride as an argument, so Triton compiles another variant (a leak the H100 showed: long
    # prefix runs compiled 1-6 variants inside timed runs after the start-up warm-up)
    wide = HostLayout.build(16, [1, 1], [3, 250], [[1], list(range(16))], [-1, -1], [], [])
    narrow = HostLayout.build(16, [1, 1], [3, 200], [[1], list(range(13))], [-1, -1], [], [])
    assert wide.own_width % 16 == 0 and narrow.own_width % 16 != 0
    assert spec(wide) != spec(narrow)
    prefix = HostLayout.build(16, [1, 1], [3, 4], [[1], [2]], [0, 0], [16 * 16], [list(range(16))])
    prefix_odd = HostLayout.build(16, [1, 1], [3, 4], [[1], [2]], [0, 0], [16 * 13], [list(range(13))])
    assert spec(prefix) != spec(prefix_odd)


class _Recorder:
    """A ModelRunner's launch, recording each step's graph key or eager specialization."""

    def __init__(self, runner):
        self.runner = runner
        self.keys: Counter = Counter()
        self.mixed: Counter = Counter()
        self.eager: set = set()
        self.steps = 0
        self._real = runner.launch

    def __call__(self, batch, rows, prev=None):
        self.steps += 1
        layout = self.runner.host_layout(batch)
        key = self.runner.graph_key(batch, layout)
        if key is None:
            self.eager.add(self.runner.eager_specialization(layout))
            size = self.runner.mixed_size(layout)
            if size is not None:
                self.mixed[size] += 1
        else:
            self.keys[key] += 1
        return self._real(batch, rows, prev)


@pytest.mark.parametrize("policy,overlap", [("batchllm", False), ("batchllm", True), ("vllm-like", True)])
def test_the_dry_run_predicts_every_graph_key_and_eager_shape_of_the_run(policy, overlap):
    # overlap: the loop one step ahead (CUDA's), whose admissions come a step later than the
    # plain loop's; the dry run must take the same steps
    from batchllm_cli.engine.llm import LLM
    from batchllm_cli.types import SamplingParams

    llm = LLM("tiny-llama", device="cpu", token_budget=48, num_kv_blocks=200, policy=policy, max_running=24,
              overlap=overlap)
    # stand-in graphs: the runner's host-side choice of graph keys, never run (no GPU here)
    model = SimpleNamespace(config=SimpleNamespace(num_heads=llm.model_config.num_heads,
                                                   num_kv_heads=llm.model_config.num_kv_heads))
    llm.runner.graphs = DecodeGraphs(model, [], 16, llm.max_model_len, torch.device("cpu"))
    llm.runner.graphs.run = lambda layout, key, ids, pos, tables, rows, feed=None: torch.zeros(
        (layout.num_decodes, llm.model_config.hidden_size))
    # and piecewise graphs (run eagerly) for the other steps
    llm.runner.mixed = EagerMixed(llm.runner.model, llm.runner.kv_caches, 64)
    rng = np.random.default_rng(0)
    prefix = rng.integers(5, 200, 40).tolist()
    prompts = [prefix + rng.integers(5, 200, int(rng.integers(3, 30))).tolist() for _ in range(20)]
    prompts += [rng.integers(5, 200, int(rng.integers(3, 60))).tolist() for _ in range(10)]
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    requests = llm.make_requests(prompts, params)
    plan = llm.plan(requests)
    c = llm.config
    shapes = step_shapes(llm.runner, requests, plan.groups, token_budget=c.token_budget, memory_bound=c.memory_bound,
                         policy=c.policy, max_running=c.max_running)
    recorder = _Recorder(llm.runner)
    llm.runner.launch = recorder
    seen = []
    done = list(llm.stream(requests, plan, on_progress=seen.append, warm=False))
    assert len(done) == len(requests)
    assert seen[-1].steps == recorder.steps  # the progress counts launched steps, no empty ones
    assert recorder.keys == shapes.graph_keys  # every decode step's key, with its count
    assert recorder.mixed == shapes.mixed_sizes and sum(shapes.mixed_sizes.values()) >= 10  # and every mixed step's size
    assert recorder.eager == set(shapes.eager)
    assert len(shapes.graph_keys) >= 2 and len(shapes.eager) >= 2
    assert shapes.steps == recorder.steps
