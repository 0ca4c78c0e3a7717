"""Tree of Thoughts-style search: breadth-first and depth-first over steps, the PRM as the state value.

Yao et al. 2023 (arXiv 2305.10601) treat each partial solution as a state, propose k next
thoughts per state with the LM, value the new states, and search:

* ``tot_bfs``: at each depth, every frontier state gets ``n`` proposals (one ``expand`` call
  for the whole frontier, one ``score`` call); the ``breadth`` best new states by value form
  the next frontier. Terminal states are kept as finished solutions. Unlike search-and-learn's
  beam search, each state always gets ``n`` proposals and the frontier is not refilled when
  states finish.
* ``tot_dfs``: expand the most promising state first; children whose value is below
  ``value_threshold`` are pruned, and when a state has no child left the search backtracks to
  the next-best unexplored sibling of it or of an ancestor. It stops after ``solutions``
  finished solutions at or above the threshold, or ``max_expansions`` expansions.

A state's value is its aggregated PRM score (``problem.aggregation``; with ``last`` it is the
score of the state's newest step).

How this differs from the paper (hence "-style"): ToT values states with the LM itself
(``value``: "sure / likely / impossible" sampled several times, or ``vote`` across states)
and proposes thoughts with a task-specific propose prompt; ponder values states with the PRM
and samples ``n`` continuations of the step prompt. ``tot_dfs``' threshold applies to the
PRM score. Under a generated-token budget an expansion's samples come in batched rounds of
what fits (``SearchProblem._draw``) until the budget is spent.

Example:
    >>> from ponder.models import ScriptedPolicy
    >>> from ponder.models.prm import FunctionPRM
    >>> from ponder.models.types import Prompt
    >>> from ponder.search.base import SearchProblem
    >>> def reply(prompt):
    ...     return "2 + 3 = 5.\\n\\n" if not prompt.assistant_prefix else "Answer: 5"
    >>> prm = FunctionPRM(lambda q, steps: 0.9)
    >>> problem = SearchProblem(Prompt.user("What is 2 + 3?"), ScriptedPolicy(reply), prm)
    >>> tot_bfs(problem, n=2, breadth=1).answer, tot_dfs(problem, n=2).answer
    ('5', '5')
"""

from __future__ import annotations

from typing import Any

from ponder.search.base import SearchProblem, SearchResult, finish
from ponder.search.beam import expand_nodes, finished_result
from ponder.search.best_of_n import candidate, check_options, check_positive, choose, option, path_value
from ponder.search.tree import SearchTree

__all__ = ["tot_bfs", "tot_dfs"]


def tot_bfs(problem: SearchProblem, *, n: int = 8, **options: Any) -> SearchResult:
    """ToT breadth-first search: ``n`` proposals per state, the ``breadth`` best states kept.

    Options:
        breadth: b, states kept per depth (default 2).
        max_depth: steps at most (default ``problem.max_steps``).
    """
    check_options("tot_bfs", options, ("breadth", "max_depth"))
    breadth = option(options, "breadth", 2, int)
    max_depth = option(options, "max_depth", None, int) or problem.max_steps
    check_positive(n=n, breadth=breadth, max_depth=max_depth)
    tree = SearchTree(problem.question)
    frontier = [0]
    for _ in range(max_depth):
        if not frontier or problem.budget.exhausted:
            break
        new = [x for row in expand_nodes(problem, tree, frontier, n) for x in row]
        ranked = sorted(
            (x for x in new if not tree[x]["terminal"]), key=lambda x: -path_value(problem, tree, x)
        )
        frontier = ranked[:breadth]
        for x in ranked[breadth:]:
            tree[x]["note"] = "pruned"
    return finished_result(problem, tree, "tot_bfs", frontier=frontier)


def tot_dfs(problem: SearchProblem, *, n: int = 8, **options: Any) -> SearchResult:
    """ToT depth-first search with a value threshold and backtracking.

    Options:
        value_threshold: states valued below this are pruned (default 0.5).
        solutions: stop after this many finished solutions at or above the threshold (default 1).
        max_expansions: expansions at most (default ``4 * max_depth``).
        max_depth: steps at most (default ``problem.max_steps``).
    """
    check_options("tot_dfs", options, ("value_threshold", "solutions", "max_expansions", "max_depth"))
    threshold = option(options, "value_threshold", 0.5, float)
    wanted = option(options, "solutions", 1, int)
    max_depth = option(options, "max_depth", None, int) or problem.max_steps
    max_expansions = option(options, "max_expansions", None, int) or 4 * max_depth
    check_positive(n=n, solutions=wanted, max_expansions=max_expansions, max_depth=max_depth)
    tree = SearchTree(problem.question)
    stack = [0]  # states to expand; the best child is pushed last, so it is popped first
    accepted: list[int] = []
    for expansion in range(max_expansions):
        if not stack or len(accepted) >= wanted or problem.budget.exhausted:
            break
        state = stack.pop()
        tree[state]["note"] = f"expanded #{expansion + 1}"
        kids = sorted(expand_nodes(problem, tree, [state], n)[0], key=lambda x: -path_value(problem, tree, x))
        for x in kids:
            if path_value(problem, tree, x) < threshold:
                tree[x]["note"] = f"pruned (value < {threshold:g})"
            elif tree[x]["terminal"]:
                accepted.append(x)
        good = [x for x in kids if path_value(problem, tree, x) >= threshold and not tree[x]["terminal"]]
        stack += [x for x in reversed(good) if tree[x]["depth"] < max_depth]
    if accepted:
        # the best accepted solution, the others listed as candidates too
        candidates = [candidate(problem, tree, x) for x in tree.terminals()]
        node = choose([c for c in candidates if c["node"] in accepted])
        return finish(problem, tree, node, "tot_dfs", candidates)
    return finished_result(problem, tree, "tot_dfs", frontier=stack)
