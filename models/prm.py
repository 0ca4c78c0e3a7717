"""The PRM seam: a process reward model scores every step of candidate solutions.

``score(question, steps)`` takes one question and a batch of candidate solutions, each a
list of steps, and returns one score in [0, 1] per step. How step scores become one
solution score is a separate choice (``aggregate_scores``), as in search-and-learn.

Example:
    >>> aggregate_scores([0.9, 0.5, 0.8], "min")
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

from ponder.errors import ConfigError

__all__ = ["PRM", "Aggregation", "aggregate_scores"]

Aggregation = Literal["last", "min", "prod", "mean"]


@runtime_checkable
class PRM(Protocol):
    """Scores each step of each candidate solution to ``question``."""

    name: str

    def score(self, question: str, steps: Sequence[Sequence[str]]) -> list[list[float]]: ...


def aggregate_scores(scores: Sequence[float], how: Aggregation = "last") -> float:
    """Reduce one solution's step scores to one number (``last`` is search-and-learn's default)."""
    if not scores:
        return 0.0
    if how == "last":
        return float(scores[-1])
    if how == "min":
        return float(min(scores))
    if how == "prod":
        return float(math.prod(scores))
    if how == "mean":
        return float(sum(scores) / len(scores))
    raise ConfigError(f"unknown aggregation {how!r}; use last, min, prod or mean")
