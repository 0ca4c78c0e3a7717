"""Step-level beam search: top N/M kept per depth, finished beams set aside, width refilled."""

from __future__ import annotations

import pytest

from ponder.errors import ConfigError
from ponder.models.types import SamplingParams
from ponder.search import beam_search
from ponder.search.best_of_n import path_value
from ponder.search.budget import Budget

# The greedy first step "trap" scores best but leads nowhere; "good" is second and wins.
TRAP = {
    (): ["trap", "good", "meh", "Answer: 3"],
    ("trap",): ["trap2a", "trap2b"],
    ("good",): ["good2a", "good2b"],
    ("trap", "trap2a"): ["Answer: 9"],
    ("good", "good2a"): ["Answer: 5"],
    ("good", "good2b"): ["Answer: 5"],
}
TRAP_SCORES = {
    "trap": 0.9,
    "good": 0.6,
    "meh": 0.3,
    "Answer: 3": 0.05,
    "trap2a": 0.2,
    "trap2b": 0.15,
    "good2a": 0.8,
    "good2b": 0.7,
    "Answer: 5": 0.95,
    "Answer: 9": 0.3,
}


def test_beam_keeps_exactly_the_top_k_per_depth_and_escapes_the_trap(make_problem):
    problem = make_problem(TRAP, TRAP_SCORES)
    result = beam_search(problem, n=4, beam_width=2)
    tree = result.tree
    assert result.steps == ["good", "good2a", "Answer: 5"] and result.answer == "5"
    for depth in (1, 2):
        level = [x for x in tree.graph if tree[x]["depth"] == depth and not tree[x]["terminal"]]
        top2 = sorted(level, key=lambda x: -path_value(problem, tree, x))[:2]
        expanded = [x for x in level if tree.children(x)]
        assert sorted(expanded) == sorted(top2)
    assert {tree[x]["step"] for x in tree.graph if tree[x]["depth"] == 1 and tree.children(x)} == {
        "trap",
        "good",
    }
    # the finished low-scored beam is kept as a candidate and never expanded
    early = next(x for x in tree.graph if tree[x]["step"] == "Answer: 3")
    assert tree[early]["terminal"] and not tree.children(early)
    assert early in [c["node"] for c in result.candidates]
    # one generate call and one PRM call per depth; N samples at the root, N // k per active beam after
    assert problem.policy.calls == [
        ([()], 4),
        ([("trap",), ("good",)], 2),
        ([("good", "good2a"), ("good", "good2b")], 2),
    ]
    assert result.budget["prm_calls"] == result.budget["policy_calls"] == 3


def test_a_greedy_beam_falls_into_the_trap(make_problem):
    result = beam_search(make_problem(TRAP, TRAP_SCORES), n=4, beam_width=4)
    assert result.steps == ["trap", "trap2a", "Answer: 9"]


def test_width_is_refilled_when_beams_finish(make_problem):
    table = {
        (): ["a", "b", "Answer: 1", "Answer: 2"],
        ("a",): ["Answer: 5"],
        ("b",): ["b2", "Answer: 6"],
        ("b", "b2"): ["Answer: 7"],
    }
    problem = make_problem(table, {"a": 0.9, "b": 0.8, "Answer: 7": 0.99})
    result = beam_search(problem, n=4, beam_width=2)
    # only b2 is still active at depth 3, so it gets all N = 4 samples
    assert problem.policy.calls[-1] == ([("b", "b2")], 4)
    assert result.answer == "7"
    assert len(result.candidates) == 2 + 2 + 1 + 4


def test_budget_stops_beam_search_and_returns_the_best_found(make_problem):
    full = beam_search(make_problem(TRAP, TRAP_SCORES), n=4, beam_width=2)
    # steps of at most 3 tokens: with 1 token left not one fits, so one sample (the one that may
    # pass the limit) is drawn, and the search stops
    step = SamplingParams(max_tokens=3, temperature=0.8)
    problem = make_problem(TRAP, TRAP_SCORES, budget=Budget(max_generated_tokens=1), params=step)
    result = beam_search(problem, n=4, beam_width=2)
    assert problem.policy.calls == [([()], 1)]
    assert result.budget["policy_calls"] == 1 < full.budget["policy_calls"]
    assert result.budget["exhausted"] and result.budget["generated_tokens"] <= 1 + 3
    problem = make_problem(TRAP, TRAP_SCORES, budget=Budget(max_generated_tokens=6), params=step)
    result = beam_search(problem, n=4, beam_width=2)
    # 6 // 3: two worst-case samples fit; they used 2 tokens, so the rest of the root's 4
    # come in rounds of what fits, and then the budget is spent
    assert problem.policy.calls == [([()], 2), ([()], 1), ([()], 1)]
    assert result.budget["generated_tokens"] == 6 and result.budget["exhausted"]
    assert result.answer == "3"  # the only solution finished before the budget ran out


def test_budget_with_nothing_finished_returns_the_best_partial_path(make_problem):
    table = {**TRAP, (): ["trap", "good", "meh", "bad"]}
    result = beam_search(
        make_problem(table, TRAP_SCORES, budget=Budget(max_policy_calls=2)), n=4, beam_width=2
    )
    assert result.budget["policy_calls"] == 2
    assert result.steps == ["good", "good2a"] and result.answer is None and not result.candidates
    assert [x for x in result.tree.graph if result.tree[x]["chosen"]] == result.tree.path(
        next(x for x in result.tree.graph if result.tree[x]["step"] == "good2a")
    )


def test_beam_is_deterministic(make_problem):
    a = beam_search(make_problem(TRAP, TRAP_SCORES), n=4, beam_width=2)
    b = beam_search(make_problem(TRAP, TRAP_SCORES), n=4, beam_width=2)
    assert a.tree.to_dict() == b.tree.to_dict()


@pytest.mark.parametrize("select, answer", [("best", "9"), ("weighted", "5"), ("majority", "5")])
def test_selection_among_finished_beams(make_problem, select, answer):
    table = {(): ["Answer: 9", "Answer: 5", "Answer: 5", "x"]}
    scores = {"Answer: 9": 0.9, "Answer: 5": 0.5, "x": 0.1}
    assert (
        beam_search(make_problem(table, scores), n=4, beam_width=2, max_depth=1, select=select).answer
        == answer
    )


def test_unknown_selection_is_refused_before_any_call(make_problem):
    problem = make_problem(TRAP, TRAP_SCORES)
    with pytest.raises(ConfigError, match="select="):
        beam_search(problem, n=4, select="vote")
    assert problem.policy.calls == []
