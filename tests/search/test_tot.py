"""Tree of Thoughts: BFS keeps the b best states; DFS prunes below a threshold and backtracks."""

from __future__ import annotations

from ponder.search import tot_bfs, tot_dfs
from ponder.search.best_of_n import path_value


def test_bfs_keeps_the_b_best_states_per_depth(make_problem):
    table = {
        (): ["a", "b", "c"],
        ("a",): ["a2", "Answer: 7"],
        ("b",): ["b2", "Answer: 5"],
    }
    scores = {
        "a": 0.9,
        "b": 0.8,
        "c": 0.2,
        "a2": 0.3,
        "b2": 0.4,
        "Answer: 5": 0.9,
        "Answer: 7": 0.6,
        "Answer: 0": 0.1,
    }
    problem = make_problem(table, scores)
    result = tot_bfs(problem, n=3, breadth=2, max_depth=3)
    tree = result.tree
    for depth in (1, 2):
        level = [x for x in tree.graph if tree[x]["depth"] == depth and not tree[x]["terminal"]]
        expanded = sorted(x for x in level if tree.children(x))
        assert expanded == sorted(sorted(level, key=lambda x: -path_value(problem, tree, x))[:2])
    # every frontier state gets n proposals, the whole frontier in one call
    assert problem.policy.calls[:2] == [([()], 3), ([("a",), ("b",)], 3)]
    assert result.answer == "5"


def test_dfs_backtracks_when_every_child_is_below_threshold(make_problem):
    table = {
        (): ["A", "B"],
        ("A",): ["A1", "A2"],
        ("B",): ["Answer: 5", "B2"],
    }
    scores = {"A": 0.9, "B": 0.7, "A1": 0.2, "A2": 0.1, "Answer: 5": 0.8, "B2": 0.6}
    problem = make_problem(table, scores)
    result = tot_dfs(problem, n=2, value_threshold=0.5)
    tree = result.tree
    # root, then the better state A (a dead end), then back to B
    assert [prefixes for prefixes, _ in problem.policy.calls] == [[()], [("A",)], [("B",)]]
    assert result.steps == ["B", "Answer: 5"]
    a = next(x for x in tree.graph if tree[x]["step"] == "A")
    assert all(tree[c]["note"].startswith("pruned") for c in tree.children(a))
    assert not tree[a]["chosen"]


def test_dfs_returns_something_when_nothing_passes(make_problem):
    problem = make_problem({(): ["x", "y"]}, {"x": 0.1, "y": 0.2})
    result = tot_dfs(problem, n=2, value_threshold=0.5)
    assert result.steps == ["y"] and result.answer is None
    assert result.budget["policy_calls"] == 1
