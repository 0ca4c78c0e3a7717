"""MCTS: UCT selection, PRM evaluation, values backed up as running means."""

from __future__ import annotations

import pytest

from ponder.errors import ConfigError
from ponder.search import mcts
from ponder.search.best_of_n import path_value

TABLE = {
    (): ["a", "b"],
    ("a",): ["a2", "Answer: 9"],
    ("b",): ["Answer: 5", "b2"],
}
SCORES = {"a": 0.7, "b": 0.6, "a2": 0.4, "Answer: 9": 0.3, "Answer: 5": 0.9, "b2": 0.5, "Answer: 0": 0.1}


def test_visits_and_values_are_backed_up(make_problem):
    problem = make_problem(TABLE, SCORES, max_steps=3)
    result = mcts(problem, n=2, iterations=6)
    tree = result.tree
    assert tree[0]["visits"] == 6
    for x in tree.graph:
        kids = tree.children(x)
        own = tree[x]["visits"] - sum(tree[c]["visits"] for c in kids)
        # a backup through a node came through one of its children, or is the node's own
        # evaluation: once as the evaluated new child, or again and again as a leaf at the depth limit
        assert own in ((0,) if x == 0 else (0, 1)) or (not kids and own == tree[x]["visits"])
        if tree[x]["visits"]:
            backed = own * path_value(problem, tree, x) + sum(
                tree[c]["visits"] * tree[c]["value"] for c in kids
            )
            assert tree[x]["value"] == pytest.approx(backed / tree[x]["visits"])
    # one generate call (one partial solution) and one PRM call per expansion
    assert all(len(prefixes) == 1 and n == 2 for prefixes, n in problem.policy.calls)
    assert result.budget["policy_calls"] == result.budget["prm_calls"] <= 6
    assert result.answer == "5"
    assert all(x == 0 or "visits" in tree[x] for x in tree.graph)


def test_env_reward_on_terminal_steps(make_problem):
    seen: list[str] = []

    def evaluate(text: str) -> tuple[bool, str]:
        seen.append(text)
        return text.endswith("Answer: 9"), "checked"

    # the PRM prefers 5, the environment accepts 9: the env reward decides
    problem = make_problem(TABLE, SCORES, max_steps=3, evaluate=evaluate)
    result = mcts(problem, n=2, iterations=8, use_env_reward=True)
    assert result.answer == "9"
    rewarded = [c for c in result.candidates if "reward" in c]
    assert rewarded and all(c["reward"] in (0.0, 1.0) for c in rewarded)
    # every finished solution is judged once (then cached on its node)
    assert len(seen) == len(result.tree.terminals())


def test_env_reward_without_evaluate_names_the_fix(make_problem):
    with pytest.raises(ConfigError, match="evaluate="):
        mcts(make_problem(TABLE, SCORES), n=2, iterations=2, use_env_reward=True)
