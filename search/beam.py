"""Step-level beam search guided by a PRM.

As in search-and-learn (Hugging Face, "Scaling test-time compute", Dec 2024; Snell et al.
2024, arXiv 2408.03314): with N samples per step and beam width M, keep N/M beams; at each
depth every active beam is extended by one step, the new steps are scored by the PRM, and the
N/M best partial solutions (by aggregated score) are kept. A beam whose new step is terminal
is set aside as a finished solution and not expanded again.

Filling the width: search-and-learn copies the active beams round-robin until there are N of
them, so every depth draws N samples however many beams are still active. Here each of the k
active beams gets ``N // k`` samples in one ``generate`` call (at least M, since k <= N/M):
the same total up to rounding, without sending duplicate prompts (a seeded API backend
would return the same samples for each copy).

All active beams of one depth go to the policy in one ``problem.expand`` call and all new
steps to the PRM in one ``problem.score`` call. Under a generated-token budget the samples
come in batched rounds, each asking only for what still fits in the worst case
(``SearchProblem._draw``), so the last depth may be narrower than N and the search passes
the budget by less than one step's ``max_tokens``.

Example:
    >>> from ponder.models import ScriptedPolicy
    >>> from ponder.models.prm import FunctionPRM
    >>> from ponder.models.types import Prompt
    >>> from ponder.search.base import SearchProblem
    >>> def reply(prompt):
    ...     return "2 + 3 = 5.\\n\\n" if not prompt.assistant_prefix else "Answer: 5"
    >>> prm = FunctionPRM(lambda q, steps: 0.9)
    >>> problem = SearchProblem(Prompt.user("What is 2 + 3?"), ScriptedPolicy(reply), prm)
    >>> result = beam_search(problem, n=4, beam_width=2)
    >>> result.steps, result.answer, result.budget["policy_calls"]
    (['2 + 3 = 5.', 'Answer: 5'], '5', 2)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ponder.models.types import Prompt
from ponder.search.base import SearchProblem, SearchResult, finish
from ponder.search.best_of_n import (
    Selection,
    candidate,
    check_options,
    check_positive,
    check_selection,
    choose,
    option,
    path_value,
)
from ponder.search.tree import SearchTree

__all__ = ["beam_search", "best_partial", "expand_nodes", "finished_result"]


@contextmanager
def _expanding(problem: SearchProblem, prompt: Prompt | None) -> Iterator[None]:
    """Expand with ``prompt`` instead of the problem's (LATS adds reflections), and with a
    terminal test that needs an explicit final answer; both restored afterwards.
    """
    saved = problem.prompt
    if prompt is not None:
        problem.prompt = prompt
    try:
        yield
    finally:
        problem.prompt = saved


def expand_nodes(
    problem: SearchProblem,
    tree: SearchTree,
    parents: Sequence[int],
    n: int,
    *,
    prompt: Prompt | None = None,
    score: bool = True,
    logprobs: bool = False,
) -> list[list[int]]:
    """Add ``n`` next steps under each of ``parents``; returns the new nodes per parent.

    One ``problem.expand`` call for all parents, one ``problem.score`` call for all new steps
    (none with ``score=False``: the steps get no PRM score); each node gets its tokens, PRM
    score, terminal flag, (if terminal) the answer and, with ``logprobs=True``, ``logprob``
    (the sum over its tokens) when the backend returns them. A parent the budget did not
    pay for gets no new nodes.
    """
    if not parents:
        return []
    prefixes = [tree.steps(p) for p in parents]
    with _expanding(problem, prompt):
        rows = problem.expand(prefixes, n, logprobs=logprobs)
    solutions = [[*prefix, s.text] for prefix, row in zip(prefixes, rows, strict=True) for s in row]
    scores = iter(problem.score(solutions) if score else [[None]] * len(solutions))
    out = []
    for parent, prefix, row in zip(parents, prefixes, rows, strict=True):
        nodes = []
        for s in row:
            last = next(scores)[-1]
            node = tree.add(
                parent,
                s.text,
                tokens=s.tokens,
                score=None if last is None else float(last),
                terminal=s.terminal,
                answer=problem.answer([*prefix, s.text]) if s.terminal else None,
            )
            if s.logprob is not None:
                tree[node]["logprob"] = s.logprob
            nodes.append(node)
        out.append(nodes)
    return out


def best_partial(problem: SearchProblem, tree: SearchTree, nodes: Sequence[int] = ()) -> int | None:
    """The best-scored of ``nodes`` (default: every leaf); ties go to the deeper, then earlier node."""
    pool = list(nodes) or list(tree.leaves())
    if not pool:
        return None
    return max(pool, key=lambda x: (path_value(problem, tree, x), tree[x]["depth"], -x))


def finished_result(
    problem: SearchProblem,
    tree: SearchTree,
    algorithm: str,
    *,
    select: Selection = "best",
    frontier: Sequence[int] = (),
) -> SearchResult:
    """The result over every terminal node of ``tree``; the best partial path if none finished."""
    candidates = [candidate(problem, tree, x) for x in tree.terminals()]
    node = choose(candidates, select) if candidates else best_partial(problem, tree, frontier)
    return finish(problem, tree, node, algorithm, candidates)


def _unique(tree: SearchTree, nodes: Sequence[int]) -> list[int]:
    """``nodes`` without those whose partial solution repeats an earlier one's."""
    seen: set[tuple[str, ...]] = set()
    out = []
    for x in nodes:
        key = tuple(tree.steps(x))
        if key not in seen:
            seen.add(key)
            out.append(x)
    return out


def beam_search(problem: SearchProblem, *, n: int = 8, **options: Any) -> SearchResult:
    """PRM-guided step-level beam search.

    Options:
        beam_width: M, samples per kept beam; N/M beams are kept (default 4).
        max_depth: steps at most (default ``problem.max_steps``).
        select: how the answer is picked among finished solutions: ``best`` (default),
            ``weighted`` (weighted best-of-N over the finished beams) or ``majority``.
        filter_duplicates: drop active beams whose text repeats an earlier one (default False).
    """
    check_options("beam", options, ("beam_width", "max_depth", "select", "filter_duplicates"))
    beam_width = option(options, "beam_width", 4, int)
    max_depth = option(options, "max_depth", None, int) or problem.max_steps
    check_positive(n=n, beam_width=beam_width, max_depth=max_depth)
    select = check_selection(options.get("select", "best"))
    keep = max(1, n // beam_width)
    tree = SearchTree(problem.question)
    active = [0]
    for _ in range(max_depth):
        if not active or problem.budget.exhausted:
            break
        new = [x for row in expand_nodes(problem, tree, active, max(1, n // len(active))) for x in row]
        open_ = [x for x in new if not tree[x]["terminal"]]
        if options.get("filter_duplicates"):
            open_ = _unique(tree, open_)
        # sorted() is stable: equal scores keep generation order, so the search is deterministic
        ranked = sorted(open_, key=lambda x: -path_value(problem, tree, x))
        active = ranked[:keep]
        for x in ranked[keep:]:
            tree[x]["note"] = "pruned"
    return finished_result(problem, tree, "beam", select=select, frontier=active)
