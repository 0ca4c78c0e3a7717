"""Self-consistency (majority vote): sample N whole solutions, return the most common answer.

Wang et al. 2022 (arXiv 2203.11171): sample several reasoning paths and marginalise them out
by voting on the final answer. No PRM is needed (``problem.prm`` may be None); the N
solutions come from ``problem.complete`` (one call, or batched rounds within the budget) and
become chains under the root. ``ponder.search.sample_and_score`` computes it together with
best-of-N and weighted best-of-N on the same samples.

Example:
    >>> from ponder.models import ScriptedPolicy
    >>> from ponder.models.types import Prompt
    >>> from ponder.search.base import SearchProblem
    >>> replies = ["2 + 3 = 6.\\n\\nAnswer: 6", "2 + 3 = 5.\\n\\nAnswer: 5", "So 5.\\n\\nAnswer: 5"]
    >>> problem = SearchProblem(Prompt.user("What is 2 + 3?"), ScriptedPolicy(replies, cycle=True))
    >>> result = majority(problem, n=3)
    >>> result.answer, len(result.candidates)
    ('5', 3)
    >>> majority_vote(["Answer: 4", "Answer: 5", "4"], key=lambda s: s.split()[-1])
    'Answer: 4'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from ponder.search.base import SearchProblem, SearchResult
from ponder.search.best_of_n import check_options, check_positive, sample_and_score

__all__ = ["majority", "majority_vote", "self_consistency"]


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


def majority(problem: SearchProblem, *, n: int = 8, **options: Any) -> SearchResult:
    """The first sampled solution whose answer (``problem.answer``) is the most frequent.

    The PRM is not used. Options: none.
    """
    check_options("majority", options, ())
    check_positive(n=n)
    # no PRM: every score is None, so among the winning answer's solutions the earliest is chosen
    return sample_and_score(problem, n, methods=["majority"])["majority"]


#: the name self-consistency is known by in the literature
self_consistency = majority
