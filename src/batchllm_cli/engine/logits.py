"""What happens to a step's logits besides drawing: repetition penalties, and logprob reports.

Penalties follow vLLM's (and OpenAI's) definitions, applied before temperature:
- repetition_penalty r: the logit of every token seen in the prompt or the output so far is
  divided by r when positive and multiplied by r when negative (r > 1 discourages repeats);
- frequency_penalty f: f times the token's count in the output so far is subtracted;
- presence_penalty p: p is subtracted once from every token that occurs in the output so far.
Logprobs are those of the model's own distribution, log_softmax of the raw logits (vLLM's
default "raw logprobs"): temperature, penalties and top-k/top-p/min-p do not change them.
"""

from __future__ import annotations

from typing import Sequence

import torch

from batchllm_cli.types import TokenLogprob, TopLogprob


def on_device(values: Sequence[int | float] | torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list as a tensor on `device`; on CUDA through pinned memory, non-blocking
    (a copy from pageable memory would wait for the device)."""
    host = values.to(dtype) if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host


def _row_index(lists: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(row of each id, the ids) of a ragged list of id lists, flattened."""
    lens = torch.tensor([len(x) for x in lists], dtype=torch.long)
    rows = torch.repeat_interleave(torch.arange(len(lists)), lens)
    flat = torch.tensor([int(t) for x in lists for t in x], dtype=torch.long)
    return on_device(rows, torch.long, device), on_device(flat, torch.long, device)


def apply_penalties(
    logits: torch.Tensor,
    prompt_ids: Sequence[Sequence[int]],
    output_ids: Sequence[Sequence[int]],
    presence: Sequence[float],
    frequency: Sequence[float],
    repetition: Sequence[float],
) -> torch.Tensor:
    """`logits` [rows, vocab] float32 with each row's penalties applied (a new tensor), from
    host lists of each row's prompt and output tokens."""
    rows, vocab = logits.shape
    device = logits.device
    counts = torch.zeros(rows, vocab, dtype=torch.float32, device=device)
    out_rows, out_ids = _row_index(output_ids, device)
    counts.index_put_((out_rows, out_ids), torch.ones_like(out_ids, dtype=torch.float32), accumulate=True)
    in_prompt = torch.zeros(rows, vocab, dtype=torch.bool, device=device)
    if any(r != 1.0 for r in repetition):
        p_rows, p_ids = _row_index(prompt_ids, device)
        in_prompt[p_rows, p_ids] = True
    return penalize(logits, counts, in_prompt, *(torch.tensor(v, dtype=torch.float32, device=device)
                                                  for v in (presence, frequency, repetition)))


def penalize(logits: torch.Tensor, counts: torch.Tensor, in_prompt: torch.Tensor, presence: torch.Tensor,
              frequency: torch.Tensor, repetition: torch.Tensor) -> torch.Tensor:
    """The penalties' formula (module docstring) on device tensors: logits, counts [rows, vocab]
    float32 (output tokens so far), in_prompt [rows, vocab] bool, and [rows] float32 penalties."""
    seen = counts > 0
    out = logits.float()
    r = repetition[:, None]
    out = torch.where((seen | in_prompt) & (r != 1.0), torch.where(out > 0, out / r, out * r), out)
    return out - frequency[:, None] * counts - presence[:, None] * seen.float()


class PenaltyState:
    """Each penalized request's output-token counts and prompt tokens, kept on the device, so
    that penalties need no host copy of the tokens drawn so far: the step loop can then draw a
    step's tokens before the host has seen the previous step's (engine/engine.py).

    A request gets a row at its first penalized draw (its prompt's tokens marked then); every
    draw adds the drawn token to its row on the device; `release` frees the row for another."""

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.counts = torch.zeros(0, vocab_size, dtype=torch.float32, device=device)
        self.in_prompt = torch.zeros(0, vocab_size, dtype=torch.bool, device=device)
        self._slot: dict[int, tuple[object, int]] = {}  # id(owner) -> (owner, row); the owner kept alive
        self._free: list[int] = []

    def __len__(self) -> int:
        return len(self._slot)

    def rows_of(self, owners: Sequence[object], prompts: Sequence[Sequence[int] | None],
                outputs: Sequence[Sequence[int]]) -> torch.Tensor:
        """The rows of `owners` (one per request, e.g. its SampleRow). A new row starts from the
        request's output tokens so far (the engine's rows start at the first draw, with none) and
        its prompt's tokens marked (prompts[k]: None when no repetition penalty reads them)."""
        rows = []
        new: list[tuple[int, Sequence[int] | None, Sequence[int]]] = []
        for owner, prompt, output in zip(owners, prompts, outputs):
            entry = self._slot.get(id(owner))
            if entry is None:
                row = self._free.pop() if self._free else self._grow()
                self._slot[id(owner)] = (owner, row)
                new.append((row, prompt, output))
            else:
                row = entry[1]
            rows.append(row)
        if new:
            self._start(new)
        return on_device(rows, torch.long, self.device)

    def _start(self, new: list[tuple[int, Sequence[int] | None, Sequence[int]]]) -> None:
        fresh = on_device([r for r, _, _ in new], torch.long, self.device)
        self.counts[fresh] = 0.0
        self.in_prompt[fresh] = False
        for k, mark in ((1, True), (2, False)):  # prompts, then outputs so far
            some = [(e[0], e[k]) for e in new if e[k] is not None and len(e[k])]
            if not some:
                continue
            at, ids = _row_index([x for _, x in some], self.device)
            index = on_device([r for r, _ in some], torch.long, self.device)[at]
            if mark:
                self.in_prompt[index, ids] = True
            else:
                self.counts.index_put_((index, ids), torch.ones_like(ids, dtype=torch.float32), accumulate=True)

    def record(self, rows: torch.Tensor, tokens: torch.Tensor) -> None:
        """Adds each row's drawn token (device tensors, no wait)."""
        self.counts.index_put_((rows, tokens), torch.ones_like(tokens, dtype=torch.float32), accumulate=True)

    def release(self, owner: object) -> None:
        entry = self._slot.pop(id(owner), None)
        if entry is not None:
            self._free.append(entry[1])

    def _grow(self) -> int:
        n = self.counts.shape[0]
        more = max(8, n)
        self.counts = torch.cat([self.counts, torch.zeros(more, self.vocab_size, dtype=torch.float32, device=self.device)])
        self.in_prompt = torch.cat([self.in_prompt, torch.zeros(more, self.vocab_size, dtype=torch.bool, device=self.device)])
        self._free.extend(range(n + more - 1, n, -1))
        return n


def token_logprobs(logits: torch.Tensor, token_ids: Sequence[int], num_top: Sequence[int]) -> list[TokenLogprob]:
    """Each row's logprob of its drawn token and its `num_top[row]` most likely tokens.

    logits [rows, vocab] (raw model logits); token_ids [rows]; num_top [rows] >= 0.
    """
    ids = torch.tensor(list(token_ids), dtype=torch.long, device=logits.device)
    chosen, top_vals, top_ids = logprob_tensors(logits, ids, max(num_top, default=0))
    return build_token_logprobs(list(token_ids), chosen.tolist(), top_vals.tolist(), top_ids.tolist(), num_top)


def logprob_tensors(logits: torch.Tensor, token_ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """On the logits' device, no wait: chosen [rows] (each drawn token's logprob), and the k most
    likely tokens' logprobs [rows, k] and ids [rows, k]."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [rows, vocab]
    chosen = logprobs.gather(1, token_ids[:, None])[:, 0]
    top_vals, top_ids = logprobs.topk(k, dim=-1) if k > 0 else (logprobs[:, :0], token_ids[:, None][:, :0])
    return chosen, top_vals, top_ids


def build_token_logprobs(token_ids: Sequence[int], chosen: Sequence[float], top_vals: Sequence[Sequence[float]],
                         top_ids: Sequence[Sequence[int]], num_top: Sequence[int]) -> list[TokenLogprob]:
    """TokenLogprobs from logprob_tensors' figures on the host."""
    out = []
    for row, (tok, lp, n) in enumerate(zip(token_ids, chosen, num_top, strict=True)):
        top = tuple(TopLogprob(int(top_ids[row][j]), top_vals[row][j]) for j in range(n)) if n else ()
        out.append(TokenLogprob(int(tok), lp, top))
    return out
