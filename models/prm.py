"""The PRM seam: a process reward model scores every step of candidate solutions.

``score(question, steps)`` takes one question and a batch of candidate solutions, each a
list of steps, and returns one score in [0, 1] per step. How step scores become one
solution score is a separate choice (``aggregate_scores``), as in search-and-learn.

Every implementation says what it is made of, so results can be labelled honestly:

- ``oracle``: True when the PRM reads the gold answer (``VerifierPRM`` runs the env's
  verifier). A search that used an oracle PRM returns ``SearchResult.oracle = True``. A
  ``FunctionPRM`` built from a rule that knows the answer must be made with ``oracle=True``.
- ``generates``: True when scoring generates text (``LLMJudgePRM``); a search charges those
  tokens to its generated-token budget (``usage.generated`` counts them).

A PRM that needs the task itself (the env's verifier) is a ``PerTaskPRM``: made once, unbound
(``VerifierPRM.per_task()``, what ``make_prm("verifier")`` returns), and bound to each task's
``evaluate`` by whoever runs the search (``SearchActor`` does, per search).

Example:
    >>> aggregate_scores([0.9, 0.5, 0.8], "min")
    0.5
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ponder.errors import ConfigError

__all__ = [
    "PRM",
    "Aggregation",
    "BasePRM",
    "Evaluate",
    "FunctionPRM",
    "PRMUsage",
    "PerTaskPRM",
    "aggregate_scores",
    "check_candidates",
    "score_trajectory",
    "trajectory_steps",
]

Aggregation = Literal["last", "min", "prod", "mean"]

#: a task's verifier: ``solution_text -> (success, feedback)`` (``TextEnv.verifier``)
Evaluate = Callable[[str], tuple[bool, str]]


@runtime_checkable
class PRM(Protocol):
    """Scores each step of each candidate solution to ``question``."""

    name: str

    def score(self, question: str, steps: Sequence[Sequence[str]]) -> list[list[float]]: ...


@runtime_checkable
class PerTaskPRM(PRM, Protocol):
    """A PRM that scores with a task's verifier, so it is bound to each task before a search.

    ``bind`` returns the PRM for one task (the receiver stays unbound and reusable); ``oracle``
    says whether ``evaluate`` reads the gold answer (``TextEnv.verifier_reads_answer``).
    """

    def bind(self, evaluate: Evaluate, *, oracle: bool = True) -> PRM: ...


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


@dataclass
class PRMUsage:
    """What a PRM has read: ``calls`` to ``score`` and ``tokens`` run through the model.

    A PRM that scores a new step from cached keys/values of its prefix counts only the new
    tokens, so search budgets see the saving.
    """

    calls: int = 0
    tokens: int = 0
    #: tokens the PRM generated (an LLM judge's replies); 0 for PRMs that only read
    generated: int = 0
    #: steps that got the neutral score because the generation budget did not allow grading them
    ungraded: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, tokens: int, *, generated: int = 0, ungraded: int = 0) -> None:
        with self._lock:
            self.calls += 1
            self.tokens += int(tokens)
            self.generated += int(generated)
            self.ungraded += int(ungraded)


class BasePRM(ABC):
    """Validates input, counts usage; subclasses implement ``_score``.

    ``steps`` is a batch of candidate solutions to one question, each a list of steps; the
    result has one score in [0, 1] per step.

    Attributes:
        oracle: the PRM reads the gold answer (default False; ``VerifierPRM`` is True).
        generates: scoring generates text that counts as compute (default False).
    """

    name: str = "prm"
    oracle: bool = False
    generates: bool = False

    def __init__(self) -> None:
        self.usage = PRMUsage()

    def score(self, question: str, steps: Sequence[Sequence[str]]) -> list[list[float]]:
        candidates = check_candidates(steps)
        if not candidates:
            return []
        scores, tokens = self._score(question, candidates)
        self.usage.record(tokens)
        self._check_shape(scores, candidates)
        return scores

    def _check_shape(self, scores: Sequence[Sequence[float]], candidates: Sequence[Sequence[str]]) -> None:
        if [len(s) for s in scores] != [len(c) for c in candidates]:
            raise ConfigError(f"{self.name} returned scores that do not match the steps given")

    @abstractmethod
    def _score(self, question: str, steps: list[list[str]]) -> tuple[list[list[float]], int]:
        """Scores per step, and how many tokens were read to get them."""


def check_candidates(steps: Sequence[Sequence[str]]) -> list[list[str]]:
    """``steps`` as a list of candidates (lists of step strings), or a ConfigError."""
    if isinstance(steps, str) or any(isinstance(c, str) for c in steps):
        raise ConfigError("PRM.score takes a list of candidates, each a list of step strings")
    return [list(c) for c in steps]


class FunctionPRM(BasePRM):
    """A rule as a PRM: ``fn(question, steps_so_far) -> score`` for each step (tests, oracles).

    Pass ``oracle=True`` when the rule knows the answer: searches that use it are then
    marked as oracle results.

    Example:
        >>> prm = FunctionPRM(lambda q, steps: 1.0 if "5" in steps[-1] else 0.2)
        >>> prm.score("2 + 3?", [["2 + 3 = 5"], ["2 + 3 = 6", "Answer: 5"]])
        [[1.0], [0.2, 1.0]]
        >>> prm.oracle, FunctionPRM(lambda q, steps: 1.0, oracle=True).oracle
        (False, True)
    """

    def __init__(
        self, fn: Callable[[str, list[str]], float], name: str = "function-prm", *, oracle: bool = False
    ):
        super().__init__()
        self.fn = fn
        self.name = name
        self.oracle = oracle

    def _score(self, question: str, steps: list[list[str]]) -> tuple[list[list[float]], int]:
        out = [[float(self.fn(question, c[: i + 1])) for i in range(len(c))] for c in steps]
        return out, sum(len(s.split()) for c in steps for s in c)


def trajectory_steps(trajectory: Sequence[Mapping[str, Any]] | Any) -> list[str]:
    """An agent's trajectory as PRM steps: one step per action, with what the env said back.

    Takes a list of step dicts (``action``, and ``observation`` / ``feedback`` when present) or
    anything with a ``trajectory`` attribute (a memory ``Experience``).

    Example:
        >>> trajectory_steps([{"action": "open door", "observation": "The door opens."}])
        ['Action: open door\\nObservation: The door opens.']
    """
    steps = getattr(trajectory, "trajectory", trajectory)
    out = []
    for step in steps:
        lines = [f"Action: {str(step.get('action', '')).strip()}"]
        for key in ("observation", "feedback"):
            if str(step.get(key, "")).strip():
                lines.append(f"{key.capitalize()}: {str(step[key]).strip()}")
        out.append("\n".join(lines))
    return out


def score_trajectory(prm: PRM, task: str, trajectory: Sequence[Mapping[str, Any]] | Any) -> list[float]:
    """Step scores of an agent or embodied trajectory (each action a step), from any PRM.

    Example:
        >>> prm = FunctionPRM(lambda q, steps: 0.0 if "wrong" in steps[-1] else 1.0)
        >>> score_trajectory(prm, "Boil water.", [{"action": "go kitchen"}, {"action": "wrong turn"}])
        [1.0, 0.0]
    """
    steps = trajectory_steps(trajectory)
    if not steps:
        return []
    return prm.score(task, [steps])[0]
