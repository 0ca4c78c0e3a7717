"""Monte Carlo tree search over reasoning steps, with the PRM as the evaluation.

Each iteration runs the four phases of MCTS (Kocsis & Szepesvári 2006; Browne et al. 2012),
with a PRM in place of random rollouts as in PRM-guided search for LLM reasoning:

1. Selection: from the root, follow the unfinished child with the best score until a node
   without one. ``selection="uct"`` (default, ponder's UCT-style variant):
   ``Q(c) + exploration * sqrt(ln(N(p) + 1) / (N(c) + 1))``. ``selection="puct"`` (OpenR-style,
   AlphaZero's rule): ``Q(c) + C(p) * P(c) * sqrt(N(p)) / (1 + N(c))`` with
   ``C(p) = ln((N(p) + c_base + 1) / c_base) + c_init`` (OpenR: c_init 1.25, c_base 19652) and
   the prior ``P(c)`` = the softmax over siblings of each step's mean token log-probability
   under the policy (OpenR normalises ``exp(mean logprob)``, the same thing); ``prior="sum"``
   uses the summed log-probability. A backend that returns no log-probabilities gives a
   uniform prior. Optional Dirichlet noise on the root's priors (``dirichlet_weight`` > 0;
   OpenR: alpha 0.3, weight 0.25, in its AlphaZero-style self-play loop). An unvisited child
   has ``Q`` = its aggregated PRM score (OpenR's initial critic value), so it need not be
   tried first. Finished (terminal) children are already evaluated and are not entered, so a
   node whose children have all finished is expanded again (as LATS does).
2. Expansion: draw ``n`` next steps for the leaf (one ``expand`` call, one ``score`` call).
3. Evaluation: the best new child is evaluated: its aggregated PRM score or, with
   ``use_env_reward=True``, for a terminal step the environment's verdict (1.0 / 0.0 from
   ``problem.verify``; every new terminal child is judged and the verdict is cached on the
   node). The env's verifier reads the gold answer: with ``use_env_reward=True`` the result
   is an ORACLE result (``SearchResult.oracle``). A leaf at the depth limit is not expanded;
   its value is backed up again.
4. Backpropagation: every node on the path from the evaluated node to the root gets
   ``visits += 1`` and ``value`` = the running mean of the evaluations backed up through it.

How it differs from OpenR's MCTS: one expansion per iteration with the PRM's score as the
leaf value (no rollout), duplicate sibling steps are kept (OpenR merges them), and the answer
is one finished solution (best env reward, then PRM score), not an aggregation over paths.

So the root's ``visits`` equals the iterations run, and a node's ``value`` times its visits is
its own evaluation (if it was ever the evaluated node) plus the visits-weighted values of its
children. Node attributes: ``visits``, ``value``, ``prior`` (PUCT), ``logprob`` (when the
backend gave it) and ``reward``, ``feedback`` when the env was asked. With none finished, the
answer is the path of most-visited children.

Example:
    >>> from ponder.models import ScriptedPolicy
    >>> from ponder.models.prm import FunctionPRM
    >>> from ponder.models.types import Prompt
    >>> from ponder.search.base import SearchProblem
    >>> def reply(prompt):
    ...     return "2 + 3 = 5.\\n\\n" if not prompt.assistant_prefix else "Answer: 5"
    >>> prm = FunctionPRM(lambda q, steps: 0.9)
    >>> problem = SearchProblem(Prompt.user("What is 2 + 3?"), ScriptedPolicy(reply), prm)
    >>> result = mcts(problem, n=2, iterations=4)
    >>> result.answer, result.tree[0]["visits"], result.oracle
    ('5', 4, False)
    >>> problem = SearchProblem(Prompt.user("What is 2 + 3?"), ScriptedPolicy(reply), prm)
    >>> mcts(problem, n=2, iterations=4, selection="puct").answer
    '5'
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from ponder.errors import ConfigError
from ponder.search.base import SearchProblem, SearchResult, finish, join_steps
from ponder.search.beam import expand_nodes
from ponder.search.best_of_n import candidate, check_options, check_positive, option, path_value
from ponder.search.tree import SearchTree

__all__ = [
    "backup",
    "env_reward",
    "init_children",
    "judge_terminals",
    "mcts",
    "mcts_result",
    "most_visited_path",
    "puct",
    "require_evaluate",
    "select_leaf",
    "set_priors",
    "uct",
]

Score = Callable[[SearchTree, int, int], float]


def init_children(problem: SearchProblem, tree: SearchTree, nodes: list[int]) -> None:
    """New nodes start unvisited, with their aggregated PRM score as the prior value."""
    for x in nodes:
        tree[x]["visits"] = 0
        tree[x]["value"] = path_value(problem, tree, x)


def select_leaf(tree: SearchTree, exploration: float = 1.0, *, score: Score | None = None) -> int:
    """Follow the best-scored unfinished child from the root down to a node without one.

    ``score(tree, parent, child)`` defaults to ``uct`` with ``exploration``. Finished
    solutions are already evaluated, so selection does not enter them; a node whose children
    are all finished is returned, to be expanded again with more samples.
    """
    score = score or (lambda t, p, c: uct(t, p, c, exploration))
    node = 0
    while kids := [c for c in tree.children(node) if not tree[c]["terminal"]]:
        # max() keeps the first of equal scores: deterministic
        node = max(kids, key=lambda c, p=node: score(tree, p, c))
    return node


def uct(tree: SearchTree, parent: int, child: int, exploration: float) -> float:
    """``Q(c) + exploration * sqrt(ln(N(p) + 1) / (N(c) + 1))``; finite for unvisited children."""
    bonus = math.sqrt(math.log(tree[parent]["visits"] + 1) / (tree[child]["visits"] + 1))
    return float(tree[child]["value"]) + exploration * bonus


def puct(tree: SearchTree, parent: int, child: int, c_init: float = 1.25, c_base: float = 19652) -> float:
    """``Q(c) + C(p) * P(c) * sqrt(N(p)) / (1 + N(c))``, ``C(p) = ln((N(p) + c_base + 1) / c_base) + c_init``.

    Example:
        >>> t = SearchTree()
        >>> a = t.add(0, "a"); t[0]["visits"], t[a]["visits"], t[a]["value"], t[a]["prior"] = 4, 1, 0.5, 0.5
        >>> round(puct(t, 0, a), 4)   # 0.5 + (ln(19657 / 19652) + 1.25) * 0.5 * sqrt(4) / (1 + 1)
        1.1251
    """
    n_p, n_c = tree[parent]["visits"], tree[child]["visits"]
    c = math.log((n_p + c_base + 1) / c_base) + c_init
    return float(tree[child]["value"]) + c * float(tree[child].get("prior", 1.0)) * math.sqrt(n_p) / (1 + n_c)


def set_priors(
    tree: SearchTree,
    parent: int,
    *,
    how: str = "mean",
    rng: random.Random | None = None,
    dirichlet_alpha: float = 0.3,
    dirichlet_weight: float = 0.0,
) -> None:
    """The PUCT prior of each child of ``parent``: softmax over siblings of the mean (or
    summed) token log-probability; uniform when any child has none. At the root, with
    ``dirichlet_weight`` > 0, mixed with Dirichlet(``dirichlet_alpha``) noise from ``rng``.

    Example:
        >>> t = SearchTree()
        >>> for text, lp, tok in [("a", -1.0, 2), ("b", -4.0, 2)]:
        ...     x = t.add(0, text, tokens=tok); t[x]["logprob"] = lp
        >>> set_priors(t, 0)
        >>> [round(t[x]["prior"], 3) for x in t.children(0)]   # softmax(-0.5, -2.0)
        [0.818, 0.182]
    """
    kids = tree.children(parent)
    if not kids:
        return
    logits = []
    for x in kids:
        lp = tree[x].get("logprob")
        if lp is None:
            logits = []
            break
        logits.append(lp / max(1, tree[x]["tokens"]) if how == "mean" else lp)
    if logits:
        top = max(logits)
        weights = [math.exp(v - top) for v in logits]
    else:
        weights = [1.0] * len(kids)
    priors = [w / sum(weights) for w in weights]
    if parent == 0 and dirichlet_weight > 0:
        rng = rng or random.Random(0)
        noise = [rng.gammavariate(dirichlet_alpha, 1.0) for _ in kids]
        total = sum(noise) or 1.0
        priors = [
            (1 - dirichlet_weight) * p + dirichlet_weight * z / total
            for p, z in zip(priors, noise, strict=True)
        ]
    for x, p in zip(kids, priors, strict=True):
        tree[x]["prior"] = p


def backup(tree: SearchTree, node: int, value: float) -> None:
    """Add one visit with ``value`` to ``node`` and each of its ancestors (running mean)."""
    for x in tree.path(node):
        a = tree[x]
        a["visits"] += 1
        a["value"] = (a["value"] or 0.0) + (value - (a["value"] or 0.0)) / a["visits"]


def require_evaluate(problem: SearchProblem, what: str) -> Callable[[str], tuple[bool, str]]:
    """``problem.evaluate``, or a ConfigError that says how to provide it."""
    if problem.evaluate is None:
        raise ConfigError(
            f"{what} needs environment feedback but problem.evaluate is None; build the problem with "
            "ponder.search.prompts.problem_for_task(env, task_id, policy, prm) or pass "
            "SearchProblem(..., evaluate=fn(solution) -> (success, feedback))"
        )
    return problem.evaluate


def env_reward(problem: SearchProblem, tree: SearchTree, node: int) -> tuple[float, bool, str]:
    """The environment's verdict on the solution ending at ``node``, cached on the node.

    An ORACLE: ``problem.verify`` reads the gold answer, and marks the search as such.
    """
    a = tree[node]
    if "reward" not in a:
        require_evaluate(problem, "an environment reward")
        ok, feedback = problem.verify(join_steps(tree.steps(node), problem.separator))
        a["reward"], a["feedback"] = (1.0 if ok else 0.0), feedback
    return a["reward"], a["reward"] > 0.5, a["feedback"]


def judge_terminals(problem: SearchProblem, tree: SearchTree, nodes: list[int]) -> None:
    """The env's verdict (an oracle) becomes the value of each finished solution among ``nodes``.

    Judging a finished solution costs no generation, so every new one is judged, not only the
    one evaluated for backpropagation.
    """
    for x in nodes:
        if tree[x]["terminal"]:
            tree[x]["value"] = env_reward(problem, tree, x)[0]


def most_visited_path(tree: SearchTree) -> int | None:
    """The end of the path that follows the most-visited child from the root (None: no children)."""
    node = 0
    while kids := tree.children(node):
        node = max(kids, key=lambda c: (tree[c]["visits"], tree[c]["value"]))
    return node or None


def _leaf_value(problem: SearchProblem, tree: SearchTree, node: int, use_env_reward: bool) -> float:
    if use_env_reward and tree[node]["terminal"]:
        return env_reward(problem, tree, node)[0]
    return path_value(problem, tree, node)


_OPTIONS = (
    "iterations",
    "exploration",
    "max_depth",
    "use_env_reward",
    "selection",
    "c_init",
    "c_base",
    "prior",
    "dirichlet_alpha",
    "dirichlet_weight",
)


def mcts(problem: SearchProblem, *, n: int = 8, **options: Any) -> SearchResult:
    """MCTS-style search: UCT (default) or OpenR-style PUCT selection, PRM value, n children per expansion.

    Options:
        iterations: selection-expansion-evaluation-backup rounds (default 16).
        selection: ``uct`` (default) or ``puct`` (a prior from the policy's log-probabilities).
        exploration: the UCT constant (default 1.0).
        c_init, c_base: PUCT's exploration schedule (default 1.25 and 19652, as OpenR).
        prior: PUCT prior from the ``mean`` (default, as OpenR) or ``sum`` token log-probability.
        dirichlet_alpha, dirichlet_weight: root noise on the PUCT priors (default 0.3 and 0.0:
            off; OpenR's self-play loop uses 0.25). Seeded by ``problem.seed``.
        max_depth: steps at most (default ``problem.max_steps``).
        use_env_reward: evaluate terminal steps with the env's verifier instead of the PRM
            (default False). An ORACLE: the verifier reads the gold answer, and the result
            says ``oracle=True``.
    """
    check_options("mcts", options, _OPTIONS)
    iterations = option(options, "iterations", 16, int)
    exploration = option(options, "exploration", 1.0, float)
    max_depth = option(options, "max_depth", None, int) or problem.max_steps
    use_env_reward = bool(options.get("use_env_reward", False))
    selection = options.get("selection", "uct")
    if selection not in ("uct", "puct"):
        raise ConfigError(f"unknown selection={selection!r}; use 'uct' or 'puct'")
    how = options.get("prior", "mean")
    if how not in ("mean", "sum"):
        raise ConfigError(f"unknown prior={how!r}; use 'mean' or 'sum'")
    c_init, c_base = option(options, "c_init", 1.25, float), option(options, "c_base", 19652, float)
    alpha, weight = (
        option(options, "dirichlet_alpha", 0.3, float),
        option(options, "dirichlet_weight", 0.0, float),
    )
    if not 0.0 <= weight <= 1.0 or alpha <= 0:
        raise ConfigError(f"need 0 <= dirichlet_weight <= 1 and dirichlet_alpha > 0, got {weight}, {alpha}")
    check_positive(n=n, iterations=iterations, max_depth=max_depth)
    if use_env_reward:
        require_evaluate(problem, "mcts with use_env_reward=True")
    rng = random.Random(problem.seed)
    score: Score = (
        (lambda t, p, c: puct(t, p, c, c_init, c_base))
        if selection == "puct"
        else (lambda t, p, c: uct(t, p, c, exploration))
    )
    tree = SearchTree(problem.question)
    tree[0]["value"] = 0.0
    for _ in range(iterations):
        if problem.budget.exhausted:
            break
        leaf = select_leaf(tree, score=score)
        if not tree[leaf]["terminal"] and tree[leaf]["depth"] < max_depth:
            kids = expand_nodes(problem, tree, [leaf], n, logprobs=selection == "puct")[0]
            if not kids:  # the budget paid for nothing more
                break
            init_children(problem, tree, kids)
            if selection == "puct":
                set_priors(tree, leaf, how=how, rng=rng, dirichlet_alpha=alpha, dirichlet_weight=weight)
            if use_env_reward:
                judge_terminals(problem, tree, kids)
            leaf = max(kids, key=lambda x: tree[x]["value"])
        backup(tree, leaf, _leaf_value(problem, tree, leaf, use_env_reward))
    return mcts_result(problem, tree, "mcts")


def mcts_result(problem: SearchProblem, tree: SearchTree, algorithm: str) -> SearchResult:
    """Finished solutions ranked by env reward, then PRM score; else the most-visited path."""

    def extra(x: int) -> dict[str, Any]:
        a = tree[x]
        return {"reward": a["reward"], "feedback": a["feedback"]} if "reward" in a else {}

    def rank(c: dict[str, Any]) -> tuple[float, float]:
        return c.get("reward", 0.0), float("-inf") if c["score"] is None else c["score"]

    candidates = [candidate(problem, tree, x, **extra(x)) for x in tree.terminals()]
    node = int(max(candidates, key=rank)["node"]) if candidates else most_visited_path(tree)
    return finish(problem, tree, node, algorithm, candidates)
