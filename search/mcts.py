"""Monte Carlo tree search over reasoning steps, with the PRM as the evaluation.

Each iteration runs the four phases of MCTS (Kocsis & Szepesvári 2006; Browne et al. 2012),
with a PRM in place of random rollouts as in PRM-guided search for LLM reasoning:

1. Selection: from the root, follow the unfinished child with the highest UCT score
   ``Q(c) + exploration * sqrt(ln(N(p) + 1) / (N(c) + 1))`` until a node without one. A
   child not yet visited has ``Q`` = its aggregated PRM score (a prior), so it need not be
   tried first. Finished (terminal) children are already evaluated and are not entered, so a
   node whose children have all finished is expanded again (as LATS does).
2. Expansion: draw ``n`` next steps for the leaf (one ``expand`` call, one ``score`` call).
3. Evaluation: the best new child is evaluated: its aggregated PRM score or, with
   ``use_env_reward=True``, for a terminal step the environment's verdict (1.0 / 0.0 from
   ``problem.evaluate``; every new terminal child is judged, which costs no generation, and
   the verdict is its value and is cached on the node). A leaf at the depth limit is not
   expanded; its value is backed up again.
4. Backpropagation: every node on the path from the evaluated node to the root gets
   ``visits += 1`` and ``value`` = the running mean of the evaluations backed up through it.

So the root's ``visits`` equals the iterations run, and a node's ``value`` times its visits is
its own evaluation (if it was ever the evaluated node) plus the visits-weighted values of its
children. Node attributes: ``visits``, ``value`` (and ``reward``, ``feedback`` when the env was
asked). The answer is the finished solution with the best env reward, then PRM score; with
none finished, the path of most-visited children.

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
    >>> result.answer, result.tree[0]["visits"]
    ('5', 4)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ponder.errors import ConfigError
from ponder.search.base import SearchProblem, SearchResult, finish, join_steps
from ponder.search.beam import expand_nodes
from ponder.search.best_of_n import candidate, check_options, check_positive, path_value
from ponder.search.tree import SearchTree

__all__ = [
    "backup",
    "env_reward",
    "init_children",
    "judge_terminals",
    "mcts",
    "mcts_result",
    "most_visited_path",
    "require_evaluate",
    "select_leaf",
    "uct",
]


def init_children(problem: SearchProblem, tree: SearchTree, nodes: list[int]) -> None:
    """New nodes start unvisited, with their aggregated PRM score as the prior value."""
    for x in nodes:
        tree[x]["visits"] = 0
        tree[x]["value"] = path_value(problem, tree, x)


def select_leaf(tree: SearchTree, exploration: float) -> int:
    """Follow the highest-UCT unfinished child from the root down to a node without one.

    Finished solutions are already evaluated, so selection does not enter them; a node whose
    children are all finished is returned, to be expanded again with more samples.
    """
    node = 0
    while kids := [c for c in tree.children(node) if not tree[c]["terminal"]]:
        # max() keeps the first of equal scores: deterministic
        node = max(kids, key=lambda c, p=node: uct(tree, p, c, exploration))
    return node


def uct(tree: SearchTree, parent: int, child: int, exploration: float) -> float:
    """``Q(c) + exploration * sqrt(ln(N(p) + 1) / (N(c) + 1))``; finite for unvisited children."""
    bonus = math.sqrt(math.log(tree[parent]["visits"] + 1) / (tree[child]["visits"] + 1))
    return float(tree[child]["value"]) + exploration * bonus


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
    """The environment's verdict on the solution ending at ``node``, cached on the node."""
    a = tree[node]
    if "reward" not in a:
        evaluate = require_evaluate(problem, "an environment reward")
        ok, feedback = evaluate(join_steps(tree.steps(node), problem.separator))
        a["reward"], a["feedback"] = (1.0 if ok else 0.0), feedback
    return a["reward"], a["reward"] > 0.5, a["feedback"]


def judge_terminals(problem: SearchProblem, tree: SearchTree, nodes: list[int]) -> None:
    """The env's verdict becomes the value of each finished solution among ``nodes``.

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


def mcts(problem: SearchProblem, *, n: int = 8, **options: Any) -> SearchResult:
    """MCTS with UCT selection, ``n`` children per expansion and PRM evaluation.

    Options:
        iterations: selection-expansion-evaluation-backup rounds (default 16).
        exploration: the UCT constant (default 1.0).
        max_depth: steps at most (default ``problem.max_steps``).
        use_env_reward: evaluate terminal steps with ``problem.evaluate`` instead of the PRM
            (default False).
    """
    check_options("mcts", options, ("iterations", "exploration", "max_depth", "use_env_reward"))
    iterations = int(options.get("iterations", 16))
    exploration = float(options.get("exploration", 1.0))
    max_depth = int(options.get("max_depth") or problem.max_steps)
    use_env_reward = bool(options.get("use_env_reward", False))
    check_positive(n=n, iterations=iterations, max_depth=max_depth)
    if use_env_reward:
        require_evaluate(problem, "mcts with use_env_reward=True")
    tree = SearchTree(problem.question)
    tree[0]["value"] = 0.0
    for _ in range(iterations):
        if problem.budget.exhausted:
            break
        leaf = select_leaf(tree, exploration)
        if not tree[leaf]["terminal"] and tree[leaf]["depth"] < max_depth:
            kids = expand_nodes(problem, tree, [leaf], n)[0]
            init_children(problem, tree, kids)
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
