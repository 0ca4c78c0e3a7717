"""What every search algorithm shares: the problem, step expansion, PRM scoring, the result.

A solution is a list of *steps* separated by ``separator`` (default a blank line). To extend
a partial solution the policy continues the assistant prefix ``steps joined + separator`` and
stops at the next separator; all partial solutions of one expansion go to the policy in one
``generate`` call (n samples each), and all new steps to the PRM in one ``score`` call. Both
calls are charged to the problem's ``Budget``.

Every algorithm has one signature, ``fn(problem, *, n=..., **options) -> SearchResult``, and
registers in ``ponder.search.ALGORITHMS``.

Example:
    >>> from ponder.models import ScriptedPolicy
    >>> from ponder.models.types import Prompt
    >>> policy = ScriptedPolicy(["2 + 3 = 5.\\n\\nAnswer: 5"], cycle=True)
    >>> problem = SearchProblem(Prompt.user("What is 2 + 3?"), policy, question="What is 2 + 3?")
    >>> [s.text for s in problem.expand([[]], n=2)[0]]
    ['2 + 3 = 5.', '2 + 3 = 5.']
    >>> problem.budget.policy_calls
    1
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ponder.errors import ConfigError
from ponder.models.prm import PRM, Aggregation, aggregate_scores
from ponder.models.types import Completion, Policy, Prompt, SamplingParams
from ponder.search.budget import Budget
from ponder.search.tree import SearchTree

__all__ = [
    "SearchAlgorithm",
    "SearchProblem",
    "SearchResult",
    "Step",
    "default_answer_of",
    "join_steps",
    "split_steps",
    "states_final_answer",
]

DEFAULT_SEPARATOR = "\n\n"
_ANSWER = re.compile(r"(?im)^\s*(?:final\s+)?answer\s*[:=]\s*(.+?)\s*$")
_FINAL = re.compile(r"(?im)^\s*(?:final\s+)?answer\s*[:=]|\\boxed\{|^\s*####")


def states_final_answer(text: str) -> bool:
    """True if ``text`` states a final answer (an ``Answer:`` line, ``\\boxed{}``, ``####``).

    This ends a solution; ``answer_of`` is for voting and may read any number (the math env's
    ``answer_key`` falls back to the last number, which every intermediate step has).

    Example:
        >>> states_final_answer("9 + 4 = 13."), states_final_answer("Answer: 13")
        (False, True)
    """
    return bool(_FINAL.search(text))


def default_answer_of(text: str) -> str | None:
    """The text after the last ``Answer:`` line, normalised for voting; None without one.

    Example:
        >>> default_answer_of("2 + 3 = 5.\\nAnswer: 5.")
        '5'
    """
    found = _ANSWER.findall(text)
    if not found:
        return None
    return found[-1].strip().rstrip(".").strip().replace(",", "") or None


def split_steps(text: str, separator: str = DEFAULT_SEPARATOR) -> list[str]:
    """A solution's steps: split at ``separator``, empty pieces dropped, each stripped.

    Example:
        >>> split_steps("a = 1.\\n\\n\\n\\nb = 2.\\n\\nAnswer: 2")
        ['a = 1.', 'b = 2.', 'Answer: 2']
    """
    return [s.strip() for s in text.split(separator) if s.strip()]


def join_steps(steps: Sequence[str], separator: str = DEFAULT_SEPARATOR) -> str:
    return separator.join(steps)


@dataclass(frozen=True)
class Step:
    """One generated step: its text, tokens, and whether the solution ends with it."""

    text: str
    tokens: int
    terminal: bool
    finish_reason: str = "stop"


@dataclass
class SearchProblem:
    """One question to search on, with everything the algorithms need.

    Attributes:
        prompt: the chat prompt that asks for a step-by-step solution; steps continue its
            assistant prefix.
        policy: generates steps (one batched call per expansion).
        prm: scores steps; None for algorithms that do not need one (majority vote).
        question: the text the PRM sees (default the prompt's last user message).
        params: sampling for a step (``max_tokens`` is per step; ``stop`` is set to the separator).
        separator: between steps.
        max_steps: a partial solution of this many steps is terminal.
        aggregation: PRM step scores -> solution score (``last``, ``min``, ``prod``, ``mean``).
        answer_of: solution text -> its final answer (for voting and for terminal steps).
        budget: charged by every call; algorithms stop when it is exhausted.
        seed: base sampling seed; each call derives its own.
        evaluate: solution text -> ``(success, feedback)`` from the environment, for methods
            that use environment feedback (LATS) and for oracle PRMs; None when not available.
    """

    prompt: Prompt
    policy: Policy
    prm: PRM | None = None
    question: str = ""
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_tokens=64, temperature=0.8))
    separator: str = DEFAULT_SEPARATOR
    max_steps: int = 8
    aggregation: Aggregation = "last"
    answer_of: Callable[[str], str | None] = default_answer_of
    budget: Budget = field(default_factory=Budget)
    seed: int = 0
    evaluate: Callable[[str], tuple[bool, str]] | None = None
    _calls: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if not self.separator:
            raise ConfigError("separator is empty; pass the text between steps, e.g. '\\n\\n'")
        if self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if not self.question:
            self.question = self.prompt.messages[-1].content

    # --- generation ---------------------------------------------------------------------
    def prefix_prompt(self, steps: Sequence[str]) -> Prompt:
        """The prompt whose assistant turn continues ``steps`` (plus a separator when not empty)."""
        prefix = self.prompt.assistant_prefix + (
            join_steps(steps, self.separator) + self.separator if steps else ""
        )
        return dataclasses.replace(self.prompt, assistant_prefix=prefix)

    def _next_seed(self) -> int:
        self._calls += 1
        return (self.seed * 1_000_003 + self._calls) & 0x7FFFFFFF

    def expand(self, prefixes: Sequence[Sequence[str]], n: int) -> list[list[Step]]:
        """``n`` next steps for each partial solution, from one policy call."""
        if not prefixes:
            return []
        params = dataclasses.replace(
            self.params, n=n, stop=(self.separator, *self.params.stop), seed=self._next_seed()
        )
        rows = self.policy.generate([self.prefix_prompt(p) for p in prefixes], params)
        self._charge(rows)
        return [[self._step(c, len(p) + 1) for c in row] for p, row in zip(prefixes, rows, strict=True)]

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """A policy call outside step expansion (e.g. a reflection): seeded and charged like one."""
        rows = self.policy.generate(list(prompts), dataclasses.replace(params, seed=self._next_seed()))
        self._charge(rows)
        return rows

    def complete(self, n: int, prefixes: Sequence[Sequence[str]] = ((),)) -> list[list[str]]:
        """``n`` whole solutions continuing each prefix (no stop at separators), as step lists."""
        return [steps for steps, _ in self.complete_with_tokens(n, prefixes)]

    def complete_with_tokens(
        self, n: int, prefixes: Sequence[Sequence[str]] = ((),)
    ) -> list[tuple[list[str], int]]:
        """Like ``complete``, with each solution's generated tokens."""
        per_step = self.params.max_tokens
        params = dataclasses.replace(
            self.params,
            n=n,
            max_tokens=per_step * self.max_steps,
            stop=self.params.stop,
            seed=self._next_seed(),
        )
        rows = self.policy.generate([self.prefix_prompt(p) for p in prefixes], params)
        self._charge(rows)
        out = []
        for p, row in zip(prefixes, rows, strict=True):
            out += [([*p, *split_steps(c.text, self.separator)], c.completion_tokens) for c in row]
        return out

    def _step(self, c: Completion, depth: int) -> Step:
        text = c.text.strip()
        ended = c.finish_reason == "stop" and c.stop_reason != self.separator
        terminal = ended or depth >= self.max_steps or states_final_answer(text) or not text
        return Step(text, c.completion_tokens, terminal, c.finish_reason)

    def _charge(self, rows: list[list[Completion]]) -> None:
        self.budget.charge_policy(
            generated=sum(c.completion_tokens for row in rows for c in row),
            prompt=sum(row[0].prompt_tokens for row in rows if row),
        )

    # --- scoring ------------------------------------------------------------------------
    def score(self, candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        """PRM scores of every step of every candidate, in one ``prm.score`` call."""
        if self.prm is None:
            raise ConfigError("this search needs a PRM; pass prm=... (e.g. --prm PATH or --prm verifier)")
        if not candidates:
            return []
        before = _prm_tokens(self.prm)
        scores = self.prm.score(self.question, [list(c) for c in candidates])
        read = _prm_tokens(self.prm) - before if before is not None else _approx_tokens(candidates)
        self.budget.charge_prm(tokens=read)
        return scores

    def value(self, step_scores: Sequence[float]) -> float:
        return aggregate_scores(step_scores, self.aggregation)

    def answer(self, steps: Sequence[str]) -> str | None:
        return self.answer_of(join_steps(steps, self.separator))


def _prm_tokens(prm: Any) -> int | None:
    usage = getattr(prm, "usage", None)
    return None if usage is None else int(getattr(usage, "tokens", 0))


def _approx_tokens(candidates: Sequence[Sequence[str]]) -> int:
    from ponder.models.fake import count_tokens

    return sum(count_tokens(s) for c in candidates for s in c)


@dataclass
class SearchResult:
    """What a search returns: the chosen solution, why, the tree, and what it cost.

    Attributes:
        text: the chosen solution, steps joined by the separator ("" if none was found).
        steps: the chosen solution's steps.
        answer: its final answer (None if it has none).
        score: its aggregated PRM score (None without a PRM).
        tree: everything explored; the chosen path is marked.
        budget: the totals spent (``Budget.as_dict()``).
        algorithm: the registry name.
        candidates: the finished solutions considered: ``{"steps", "answer", "score", "node"}``.
    """

    text: str
    steps: list[str]
    answer: str | None
    score: float | None
    tree: SearchTree
    budget: dict[str, Any]
    algorithm: str
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, *, with_tree: bool = True) -> dict[str, Any]:
        out = {
            "algorithm": self.algorithm,
            "text": self.text,
            "steps": self.steps,
            "answer": self.answer,
            "score": self.score,
            "budget": self.budget,
            "candidates": self.candidates,
        }
        if with_tree:
            out["tree"] = self.tree.to_dict()
        return out


def finish(
    problem: SearchProblem,
    tree: SearchTree,
    node: int | None,
    algorithm: str,
    candidates: list[dict[str, Any]] | None = None,
) -> SearchResult:
    """Build the result for the chosen ``node`` (None: nothing found) and mark its path."""
    if node is None:
        return SearchResult("", [], None, None, tree, problem.budget.as_dict(), algorithm, candidates or [])
    tree.mark_chosen(node)
    steps = tree.steps(node)
    scores = tree.scores(node)
    return SearchResult(
        join_steps(steps, problem.separator),
        steps,
        problem.answer(steps),
        problem.value(scores) if scores else None,
        tree,
        problem.budget.as_dict(),
        algorithm,
        candidates or [],
    )


class SearchAlgorithm(Protocol):
    """``fn(problem, *, n, **options) -> SearchResult``: the one signature of ``ALGORITHMS``."""

    def __call__(self, problem: SearchProblem, *, n: int = ..., **options: Any) -> SearchResult: ...
