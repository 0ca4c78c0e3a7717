"""DVTS: N/M greedy subtrees that never share a partial solution."""

from __future__ import annotations

import networkx as nx

from ponder.search import dvts

TABLE = {
    (): ["s0a", "s0b", "s0c", "s0d", "s1a", "s1b", "s1c", "s1d"],
    ("s0b",): ["p", "q", "Answer: 5", "r"],
}
# s1a outscores every first step of subtree 0 but s0b, yet subtree 0 keeps its own best
SCORES = {"s0b": 0.9, "s1a": 0.85, "s0a": 0.7, "Answer: 5": 0.95, "Answer: 0": 0.4}


def test_subtrees_stay_independent_and_each_is_greedy(make_problem):
    problem = make_problem(TABLE, SCORES, max_steps=4)
    result = dvts(problem, n=8, beam_width=4)
    tree = result.tree
    firsts = {i: [x for x in tree.children(0) if tree[x]["subtree"] == i] for i in (0, 1)}
    assert [len(v) for v in firsts.values()] == [4, 4]
    kept = {i: [x for x in firsts[i] if tree.children(x)] for i in (0, 1)}
    assert [tree[x]["step"] for x in kept[0]] == ["s0b"]
    assert [tree[x]["step"] for x in kept[1]] == ["s1a"]
    for i in (0, 1):
        mine = set().union(*(nx.descendants(tree.graph, x) for x in firsts[i]))
        assert all(tree[x]["subtree"] == i for x in mine)
        assert not mine & set(firsts[1 - i])
    # one call for all N first steps, then one call with every live subtree
    assert problem.policy.calls[0] == ([()], 8)
    assert problem.policy.calls[1] == ([("s0b",), ("s1a",)], 4)
    assert result.answer == "5"
    assert all(c["answer"] is not None for c in result.candidates)
