"""Best-of-N and weighted best-of-N: sample N whole solutions, score them, pick one.

Best-of-N returns the solution with the highest aggregated PRM score. Weighted best-of-N
(as in search-and-learn, following Snell et al. 2024, arXiv 2408.03314) sums the aggregated
scores of the solutions that reach the same final answer (``problem.answer``) and returns the
best-scored solution of the answer with the largest sum: several fairly good votes can beat
one over-scored outlier.

Both draw the N solutions with ``problem.complete`` (one call, or batched rounds under a
generated-token limit, stopping when the budget is spent) and score every step of all of them
with one ``problem.score`` call. Each solution becomes a chain of nodes under the root.

Sample once, score many ways (as search-and-learn does): ``sample_and_score`` draws one
sample set and returns the majority vote, best-of-N and weighted best-of-N results on it, so
the three are compared on the same samples at exactly the same generated tokens (majority's
result reports the budget as it was before the PRM was asked: it does not use the PRM).

This module also holds what the other algorithms share about finished solutions: the
candidate record, the choice among candidates (``best``, ``weighted``, ``majority``), and
option checking.

Example:
    >>> from ponder.models import ScriptedPolicy
    >>> from ponder.models.prm import FunctionPRM
    >>> from ponder.models.types import Prompt
    >>> from ponder.search.base import SearchProblem
    >>> policy = ScriptedPolicy(["6 + 1 = 7.\\n\\nAnswer: 7", "2 + 3 = 5.\\n\\nAnswer: 5"], cycle=True)
    >>> prm = FunctionPRM(lambda q, steps: 0.9 if "7" in steps[-1] else 0.6)
    >>> problem = SearchProblem(Prompt.user("What is 2 + 3?"), policy, prm)
    >>> best_of_n(problem, n=4).answer
    '7'
    >>> problem = SearchProblem(Prompt.user("What is 2 + 3?"), ScriptedPolicy(
    ...     ["6 + 1 = 7.\\n\\nAnswer: 7", "2 + 3 = 5.\\n\\nAnswer: 5", "2 + 3 = 5.\\n\\nAnswer: 5"],
    ...     cycle=True), prm)
    >>> weighted_best_of_n(problem, n=3).answer
    '5'
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from ponder.errors import ConfigError
from ponder.search.base import SearchProblem, SearchResult, finish
from ponder.search.tree import SearchTree

__all__ = [
    "SAMPLED_METHODS",
    "Selection",
    "best_of_n",
    "candidate",
    "check_options",
    "check_selection",
    "choose",
    "option",
    "path_value",
    "sample_and_score",
    "sample_solutions",
    "score_samples",
    "weighted_best_of_n",
]

Selection = Literal["best", "weighted", "majority"]
SELECTIONS = ("best", "weighted", "majority")

#: the methods ``sample_and_score`` computes from one sample set, and how each chooses
SAMPLED_METHODS: tuple[str, ...] = ("majority", "best_of_n", "weighted_best_of_n")
_CHOICE: dict[str, Selection] = {
    "majority": "majority",
    "best_of_n": "best",
    "weighted_best_of_n": "weighted",
}


def check_options(algorithm: str, options: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Refuse options an algorithm does not take (a typo would otherwise be silently ignored)."""
    allowed = sorted(allowed)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{algorithm} does not take option(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(allowed) or 'no options besides n'}"
        )


def option(options: Mapping[str, Any], name: str, default: Any, kind: type = int) -> Any:
    """``options[name]`` as ``kind`` (``default`` when absent or None); a value that is not one
    is a one-line ``ConfigError`` naming the option, not a traceback mid-run.

    Example:
        >>> option({"beam_width": "4"}, "beam_width", 2)
        4
        >>> option({"beam_width": "abc"}, "beam_width", 2)
        Traceback (most recent call last):
        ...
        ponder.errors.ConfigError: search option beam_width must be a number (int), got 'abc'; pass e.g. --search-arg beam_width=2
    """
    value = options.get(name)
    if value is None:
        return default
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        example = default if default is not None else (1 if kind is int else 0.5)
        raise ConfigError(
            f"search option {name} must be a number ({kind.__name__}), got {value!r}; "
            f"pass e.g. --search-arg {name}={example}"
        ) from None


def check_positive(**values: int) -> None:
    for name, v in values.items():
        if v is None or v < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")


def check_selection(how: str) -> Selection:
    if how not in SELECTIONS:
        raise ConfigError(f"unknown select={how!r}; use one of: {', '.join(SELECTIONS)}")
    return how  # type: ignore[return-value]


def path_value(problem: SearchProblem, tree: SearchTree, node: int) -> float:
    """The aggregated PRM score of the partial solution ending at ``node`` (0 for the root)."""
    scores = tree.scores(node)
    return problem.value(scores) if scores else 0.0


def candidate(problem: SearchProblem, tree: SearchTree, node: int, **extra: Any) -> dict[str, Any]:
    """The record of one finished solution, as listed in ``SearchResult.candidates``."""
    steps = tree.steps(node)
    scores = tree.scores(node)
    answer = tree[node]["answer"] if tree[node]["terminal"] else problem.answer(steps)
    return {
        "steps": steps,
        "answer": answer,
        "score": problem.value(scores) if scores else None,
        "node": node,
        **extra,
    }


def choose(candidates: Sequence[Mapping[str, Any]], how: Selection = "best") -> int | None:
    """The node of the chosen candidate; ties go to the earliest. None when there are none.

    ``best``: highest score. ``weighted``: the answer with the largest sum of scores, then its
    best-scored solution. ``majority``: the most frequent answer, then its best-scored
    solution. Candidates without an answer do not vote; if none has one, ``best`` decides.
    """
    check_selection(how)
    if not candidates:
        return None

    def score(c: Mapping[str, Any]) -> float:
        return float("-inf") if c["score"] is None else float(c["score"])

    pool = list(candidates)
    if how != "best":
        tally: dict[str, float] = defaultdict(float)
        for c in candidates:
            if c["answer"] is not None:
                tally[c["answer"]] += score(c) if how == "weighted" else 1.0
        if tally:
            # max() keeps the first maximum, and dicts keep insertion order: ties go to the earliest
            winner = max(tally, key=lambda a: tally[a])
            pool = [c for c in candidates if c["answer"] == winner]
    return int(max(pool, key=score)["node"])


def _shares(total: int, steps: Sequence[str]) -> list[int]:
    """``total`` split over ``steps`` in proportion to their length (sums to ``total`` exactly)."""
    weights = [max(1, len(s)) for s in steps]
    out = [total * w // sum(weights) for w in weights]
    out[-1] += total - sum(out)
    return out


def sample_solutions(problem: SearchProblem, n: int) -> tuple[SearchTree, list[int]]:
    """Up to ``n`` whole solutions (``problem.complete``), each a chain under the root.

    Returns the tree and the terminal node of each solution, in the order drawn (fewer than
    ``n`` when the budget ran out). A solution's generated tokens are shared over its steps by
    length, so the tree's total equals what the budget was charged.
    """
    tree = SearchTree(problem.question)
    leaves = []
    for steps, used in problem.complete_with_tokens(n):
        steps = steps or [""]
        tokens = _shares(used, steps)
        node = 0
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            node = tree.add(
                node,
                step,
                tokens=tokens[i],
                terminal=last,
                answer=problem.answer(steps) if last else None,
            )
        leaves.append(node)
    return tree, leaves


def _score_solutions(problem: SearchProblem, tree: SearchTree, leaves: Sequence[int]) -> None:
    """Score every step of every solution in one PRM call and store the scores on the nodes."""
    if not leaves:
        return
    scores = problem.score([tree.steps(leaf) for leaf in leaves])
    for leaf, row in zip(leaves, scores, strict=True):
        for node, s in zip(tree.path(leaf)[1:], row, strict=True):
            tree[node]["score"] = tree[node]["value"] = float(s)


def _check_methods(methods: Iterable[str]) -> list[str]:
    methods = list(methods)
    unknown = [m for m in methods if m not in _CHOICE]
    if unknown or not methods:
        raise ConfigError(
            f"sample_and_score computes {', '.join(SAMPLED_METHODS)}; got {', '.join(unknown) or 'none'}"
        )
    return methods


def score_samples(
    problem: SearchProblem,
    tree: SearchTree,
    leaves: Sequence[int],
    methods: Iterable[str] = SAMPLED_METHODS,
) -> dict[str, SearchResult]:
    """The results of ``methods`` on the solutions ending at ``leaves`` (from ``sample_solutions``).

    The PRM is asked once (only if a method needs it). Each result gets its own copy of the
    tree with its chosen path marked. ``majority`` sees no PRM score and reports the budget
    as it was before scoring; the PRM methods report it after (a judge's tokens included).
    """
    methods = _check_methods(methods)
    unscored = tree.copy()
    before = problem.budget.as_dict(), set(problem.oracle_sources)
    if any(m != "majority" for m in methods):
        _score_solutions(problem, tree, leaves)
    out = {}
    for m in methods:
        t = unscored.copy() if m == "majority" else tree.copy()
        candidates = [candidate(problem, t, leaf) for leaf in leaves]
        budget, sources = before if m == "majority" else (None, None)
        out[m] = finish(
            problem, t, choose(candidates, _CHOICE[m]), m, candidates, budget=budget, oracle_sources=sources
        )
    return out


def sample_and_score(
    problem: SearchProblem, n: int = 8, *, methods: Iterable[str] = SAMPLED_METHODS
) -> dict[str, SearchResult]:
    """Sample once, score many ways: ``{method: SearchResult}`` for ``methods`` on ONE sample set.

    Up to ``n`` solutions are drawn within ``problem.budget`` (``sample_solutions``), then
    majority vote, best-of-N and weighted best-of-N are read off the same samples, so they
    cost exactly the same generated tokens (a generating PRM's tokens excepted, charged to
    the PRM methods only).

    Example:
        >>> from ponder.models import ScriptedPolicy
        >>> from ponder.models.prm import FunctionPRM
        >>> from ponder.models.types import Prompt
        >>> replies = ["So 7.\\n\\nAnswer: 7", "2 + 3 = 5.\\n\\nAnswer: 5", "3 + 2 = 5.\\n\\nAnswer: 5"]
        >>> prm = FunctionPRM(lambda q, steps: 0.9 if "7" in steps[-1] else 0.5)
        >>> problem = SearchProblem(Prompt.user("What is 2 + 3?"), ScriptedPolicy(replies, cycle=True), prm)
        >>> out = sample_and_score(problem, n=3)
        >>> {m: r.answer for m, r in out.items()}
        {'majority': '5', 'best_of_n': '7', 'weighted_best_of_n': '5'}
        >>> len({r.budget["generated_tokens"] for r in out.values()})
        1
    """
    check_positive(n=n)
    methods = _check_methods(methods)
    tree, leaves = sample_solutions(problem, n)
    return score_samples(problem, tree, leaves, methods)


def best_of_n(problem: SearchProblem, *, n: int = 8, **options: Any) -> SearchResult:
    """The highest-scored of ``n`` sampled solutions (aggregation: ``problem.aggregation``).

    Options: none.
    """
    check_options("best_of_n", options, ())
    return sample_and_score(problem, n, methods=["best_of_n"])["best_of_n"]


def weighted_best_of_n(problem: SearchProblem, *, n: int = 8, **options: Any) -> SearchResult:
    """The best solution of the answer whose solutions' scores sum highest.

    Options: none.
    """
    check_options("weighted_best_of_n", options, ())
    return sample_and_score(problem, n, methods=["weighted_best_of_n"])["weighted_best_of_n"]
