"""Self-consistency: sample several answers, return the most common one.

Example:
    >>> from ponder.search import majority_vote
    >>> majority_vote(["Answer: 4", "Answer: 5", "4"], key=lambda s: s.split()[-1])
    'Answer: 4'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from ponder.models.types import Policy, Prompt, SamplingParams

__all__ = ["ALGORITHMS", "majority_vote", "self_consistency"]


def majority_vote(candidates: Sequence[str], key: Callable[[str], Any] = lambda s: s.strip()) -> str | None:
    """The first candidate whose key is the most frequent (ties go to the earliest); None if empty.

    Candidates whose key is None (no parsable answer) do not vote.
    """
    keys = [key(c) for c in candidates]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return candidates[0] if candidates else None
    best = max(counts.values())
    for c, k in zip(candidates, keys, strict=True):
        if k is not None and counts[k] == best:
            return c
    return None  # unreachable: some key has the best count


def self_consistency(
    policy: Policy,
    prompt: Prompt,
    *,
    n: int = 8,
    params: SamplingParams | None = None,
    key: Callable[[str], Any] = lambda s: s.strip(),
) -> dict[str, Any]:
    """Sample ``n`` completions in one batched call and vote.

    Returns ``{"answer", "candidates", "completion_tokens"}``.
    """
    base = params or SamplingParams(temperature=0.7)
    p = SamplingParams(
        n=n,
        max_tokens=base.max_tokens,
        temperature=base.temperature or 0.7,
        top_p=base.top_p,
        stop=base.stop,
        seed=base.seed,
    )
    row = policy.generate([prompt], p)[0]
    texts = [c.text for c in row]
    return {
        "answer": majority_vote(texts, key),
        "candidates": texts,
        "completion_tokens": sum(c.completion_tokens for c in row),
    }


#: name -> search function; every algorithm registers here.
ALGORITHMS: dict[str, Callable[..., dict[str, Any]]] = {"self_consistency": self_consistency}
