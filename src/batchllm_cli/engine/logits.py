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


def _row_index(lists: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(row of each id, the ids) of a ragged list of id lists, flattened."""
    lens = torch.tensor([len(x) for x in lists], dtype=torch.long)
    rows = torch.repeat_interleave(torch.arange(len(lists)), lens)
    flat = torch.tensor([int(t) for x in lists for t in x], dtype=torch.long)
    return rows.to(device), flat.to(device)


def apply_penalties(
    logits: torch.Tensor,
    prompt_ids: Sequence[Sequence[int]],
    output_ids: Sequence[Sequence[int]],
    presence: Sequence[float],
    frequency: Sequence[float],
    repetition: Sequence[float],
) -> torch.Tensor:
    """`logits` [rows, vocab] float32 with each row's penalties applied (a new tensor)."""
    rows, vocab = logits.shape
    device = logits.device
    counts = torch.zeros(rows, vocab, dtype=torch.float32, device=device)
    out_rows, out_ids = _row_index(output_ids, device)
    counts.index_put_((out_rows, out_ids), torch.ones_like(out_ids, dtype=torch.float32), accumulate=True)
    seen = counts > 0  # [rows, vocab] in the output so far
    out = logits.float()
    if any(r != 1.0 for r in repetition):
        in_prompt = torch.zeros(rows, vocab, dtype=torch.bool, device=device)
        p_rows, p_ids = _row_index(prompt_ids, device)
        in_prompt[p_rows, p_ids] = True
        r = torch.tensor(repetition, dtype=torch.float32, device=device)[:, None]
        out = torch.where(seen | in_prompt, torch.where(out > 0, out / r, out * r), out)
    f = torch.tensor(frequency, dtype=torch.float32, device=device)[:, None]
    p = torch.tensor(presence, dtype=torch.float32, device=device)[:, None]
    return out - f * counts - p * seen.float()


def token_logprobs(logits: torch.Tensor, token_ids: Sequence[int], num_top: Sequence[int]) -> list[TokenLogprob]:
    """Each row's logprob of its drawn token and its `num_top[row]` most likely tokens.

    logits [rows, vocab] (raw model logits); token_ids [rows]; num_top [rows] >= 0.
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [rows, vocab]
    chosen_ids = torch.tensor(list(token_ids), dtype=torch.long, device=logits.device)
    chosen = logprobs.gather(1, chosen_ids[:, None])[:, 0].tolist()
    k = max(num_top, default=0)
    if k > 0:
        top_vals, top_ids = (t.tolist() for t in logprobs.topk(k, dim=-1))
    out = []
    for row, (tok, lp, n) in enumerate(zip(token_ids, chosen, num_top, strict=True)):
        top = tuple(TopLogprob(top_ids[row][j], top_vals[row][j]) for j in range(n)) if n else ()
        out.append(TokenLogprob(int(tok), lp, top))
    return out
