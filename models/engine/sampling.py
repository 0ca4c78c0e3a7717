"""Per-row token choice for a batch whose rows each carry their own sampling parameters.

Greedy rows take the argmax. Sampled rows are scaled by their temperature, cut to their
nucleus (``top_p``) and drawn: rows with a seed draw from their own ``torch.Generator`` (so a
seeded request gives the same tokens whatever else shares the batch), the others draw
together from torch's global generator. Log-probabilities are those of the raw logits (before
temperature and top-p), as ``LocalPolicy`` has always reported them.

Example:
    >>> import torch
    >>> rows = [RowParams(temperature=0.0)]
    >>> pick(torch.tensor([[0.1, 2.0, 0.3]]), rows, want_logprobs=False)[0].tolist()
    [1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ponder.models.engine.kernels import load, pick_rows

__all__ = ["RowParams", "pick"]


@dataclass
class RowParams:
    """How one row chooses its next token."""

    temperature: float = 0.0
    top_p: float = 1.0
    generator: torch.Generator | None = None


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor, head: int = 512) -> torch.Tensor:
    """Zero the tail of each row outside its top-p mass (the most likely token is always kept).

    Sorting the whole vocabulary per row is slow on a CPU; the top ``head`` tokens almost always
    hold the nucleus, so those are sorted first and the full sort runs only when they do not.
    """
    k = min(head, probs.shape[-1])
    sorted_p, order = probs.topk(k, dim=-1)
    if bool((sorted_p.sum(dim=-1) < top_p).any()):
        sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly above each token
    sorted_p = sorted_p.masked_fill(before >= top_p[:, None], 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_p)


def _draw(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: the first token whose cumulative probability exceeds ``uniform``.

    One random number per row (not one per vocabulary entry), so rows with their own generator
    cost a scalar draw each, and the rest of the work is batched.
    """
    cdf = probs.cumsum(dim=-1)
    target = uniform[:, None] * cdf[:, -1:]  # rows need not sum to exactly 1
    idx = torch.searchsorted(cdf, target, right=True).squeeze(1)
    return idx.clamp_(max=probs.shape[-1] - 1)


def pick(
    logits: torch.Tensor, rows: Sequence[RowParams], *, want_logprobs: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Choose one token per row of float32 ``logits`` ``[B, V]``.

    Returns the tokens ``[B]`` and, if asked, their raw log-probabilities ``[B]``.
    """
    device = logits.device
    lib = load() if device.type == "cpu" else None
    if lib is not None and all(r.top_p >= 1.0 for r in rows):  # one C pass per row (kernels.py)
        uniform = torch.rand(len(rows))
        for k, r in enumerate(rows):
            if r.temperature > 0 and r.generator is not None:
                uniform[k] = torch.rand(1, generator=r.generator)[0]
        temps = torch.tensor([r.temperature for r in rows], dtype=torch.float32)
        return pick_rows(lib, logits.float(), temps, uniform, want_logprobs)
    chosen = logits.argmax(dim=-1)
    sampled = [i for i, r in enumerate(rows) if r.temperature > 0]
    if sampled:
        idx = torch.tensor(sampled, device=device)
        temps = torch.tensor([rows[i].temperature for i in sampled], device=device)
        probs = torch.softmax(logits[idx] / temps[:, None], dim=-1)
        tops = [rows[i].top_p for i in sampled]
        if min(tops) < 1.0:
            probs = _nucleus(probs, torch.tensor(tops, device=device))
        uniform = torch.rand(len(sampled), device=device)  # torch's global generator
        for k, i in enumerate(sampled):
            gen = rows[i].generator
            if gen is not None:
                uniform[k] = torch.rand(1, generator=gen, device=device)[0]
        chosen[idx] = _draw(probs, uniform)
    logprobs = None
    if want_logprobs:
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, chosen[:, None]).squeeze(1)
    return chosen, logprobs
