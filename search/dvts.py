"""Diverse verifier tree search (DVTS): N/M independent greedy subtrees.

From search-and-learn (Hugging Face, "Scaling test-time compute", Dec 2024): beam search
tends to collapse onto one high-scoring prefix, so DVTS splits the N samples into N/M
subtrees and runs each as a greedy beam of width M: every live subtree draws M next steps
for its current partial solution and keeps the one with the best aggregated PRM score. A
subtree ends when the step it keeps is terminal. Subtrees never share a partial solution, so
the finished solutions stay diverse.

The first expansion draws all N first steps from the root in one sample of N (the M steps
of subtree i are samples ``i*M .. i*M+M-1``), so no duplicate prompts are sent. After that,
all live subtrees go to the policy in one ``problem.expand`` call and all new steps to the
PRM in one ``problem.score`` call. Each node records its subtree in ``tree[node]["subtree"]``.

Example:
    >>> from ponder.models import ScriptedPolicy
    >>> from ponder.models.prm import FunctionPRM
    >>> from ponder.models.types import Prompt
    >>> from ponder.search.base import SearchProblem
    >>> def reply(prompt):
    ...     return "2 + 3 = 5.\\n\\n" if not prompt.assistant_prefix else "Answer: 5"
    >>> prm = FunctionPRM(lambda q, steps: 0.9)
    >>> problem = SearchProblem(Prompt.user("What is 2 + 3?"), ScriptedPolicy(reply), prm)
    >>> result = dvts(problem, n=4, beam_width=2)
    >>> result.answer, len(result.candidates), result.budget["policy_calls"]
    ('5', 4, 2)
"""

from __future__ import annotations

from typing import Any

from ponder.search.base import SearchProblem, SearchResult
from ponder.search.beam import expand_nodes, finished_result
from ponder.search.best_of_n import check_options, check_positive, check_selection, option, path_value
from ponder.search.tree import SearchTree

__all__ = ["dvts"]


def dvts(problem: SearchProblem, *, n: int = 8, **options: Any) -> SearchResult:
    """Diverse verifier tree search over ``n // beam_width`` independent greedy subtrees.

    Options:
        beam_width: M, next steps drawn per subtree and depth (default 4).
        max_depth: steps at most (default ``problem.max_steps``).
        select: ``best`` (default), ``weighted`` or ``majority`` over the finished solutions
            (every terminal step generated, kept or not).
    """
    check_options("dvts", options, ("beam_width", "max_depth", "select"))
    beam_width = option(options, "beam_width", 4, int)
    max_depth = option(options, "max_depth", None, int) or problem.max_steps
    check_positive(n=n, beam_width=beam_width, max_depth=max_depth)
    select = check_selection(options.get("select", "best"))
    subtrees = max(1, n // beam_width)
    tree = SearchTree(problem.question)
    heads: dict[int, int] = {}  # live subtree -> the partial solution it extends next
    if not problem.budget.exhausted:
        first = expand_nodes(problem, tree, [0], subtrees * beam_width)[0]
        groups = {i: first[i * beam_width : (i + 1) * beam_width] for i in range(subtrees)}
        heads = _advance(problem, tree, groups, dict.fromkeys(range(subtrees), 0))
    for _ in range(1, max_depth):
        if not heads or problem.budget.exhausted:
            break
        live = list(heads)
        rows = expand_nodes(problem, tree, [heads[i] for i in live], beam_width)
        heads = _advance(problem, tree, dict(zip(live, rows, strict=True)), heads)
    frontier = [x for x in heads.values() if x]
    return finished_result(problem, tree, "dvts", select=select, frontier=frontier)


def _advance(
    problem: SearchProblem, tree: SearchTree, groups: dict[int, list[int]], heads: dict[int, int]
) -> dict[int, int]:
    """Keep each subtree's best new step; returns the subtrees still going and their new heads.

    A subtree the budget drew nothing for keeps its head (the search stops soon after).
    """
    heads = dict(heads)
    for i, nodes in groups.items():
        if not nodes:
            continue
        del heads[i]
        for x in nodes:
            tree[x]["subtree"] = i
        # max() keeps the first of equal scores: deterministic
        best = max(nodes, key=lambda x: path_value(problem, tree, x))
        for x in nodes:
            if x != best and not tree[x]["terminal"]:
                tree[x]["note"] = "pruned"
        if not tree[best]["terminal"]:
            heads[i] = best
    return heads
