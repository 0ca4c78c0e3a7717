"""Majority vote, best-of-N and weighted best-of-N: N whole solutions from one call."""

from __future__ import annotations

import pytest

from ponder.errors import ConfigError
from ponder.models import ScriptedPolicy
from ponder.models.prm import FunctionPRM
from ponder.models.types import Prompt
from ponder.search import best_of_n, majority, weighted_best_of_n
from ponder.search.base import SearchProblem


def table_prm(scores: dict[str, float]) -> FunctionPRM:
    return FunctionPRM(lambda q, steps: scores.get(steps[-1], 0.5))


def _problem(replies: list[str], prm=None) -> SearchProblem:
    return SearchProblem(Prompt.user("What is 2 + 3?"), ScriptedPolicy(replies, cycle=True), prm)


def test_majority_needs_no_prm_and_votes_on_answers():
    problem = _problem(["2 + 3 = 4.\n\nAnswer: 4", "2 + 3 = 5.\n\nAnswer: 5", "2 plus 3 is 5.\n\nAnswer: 5"])
    result = majority(problem, n=3)
    assert result.answer == "5"
    assert result.steps == ["2 + 3 = 5.", "Answer: 5"]  # the first solution with the winning answer
    assert [c["answer"] for c in result.candidates] == ["4", "5", "5"]
    assert all(c["score"] is None for c in result.candidates)
    assert result.budget["policy_calls"] == 1 and result.budget["prm_calls"] == 0
    tree = result.tree
    assert len(tree.terminals()) == 3
    assert sum(tree[x]["tokens"] for x in tree.graph) == result.budget["generated_tokens"]
    assert [x for x in tree.graph if tree[x]["chosen"]] == tree.path(result.candidates[1]["node"])


def test_weighted_best_of_n_and_best_of_n_disagree():
    # one over-scored "7" against three fairly good "5"s
    replies = [
        "6 + 1 = 7.\n\nAnswer: 7",
        "2 + 3 = 5.\n\nAnswer: 5",
        "3 + 2 = 5.\n\nAnswer: 5",
        "5.\n\nAnswer: 5",
    ]
    scores = {"Answer: 7": 0.9, "Answer: 5": 0.4}
    best = best_of_n(_problem(replies, table_prm(scores)), n=4)
    weighted = weighted_best_of_n(_problem(replies, table_prm(scores)), n=4)
    assert best.answer == "7" and best.score == pytest.approx(0.9)
    assert weighted.answer == "5" and weighted.score == pytest.approx(0.4)
    for r in (best, weighted):
        assert r.budget["policy_calls"] == 1 and r.budget["prm_calls"] == 1
        assert len(r.candidates) == 4
        # every step of every solution is scored
        assert all(r.tree[x]["score"] is not None for x in r.tree.graph if x != 0)


def test_best_of_n_without_prm_names_the_fix():
    with pytest.raises(ConfigError, match="prm="):
        best_of_n(_problem(["Answer: 5"]), n=2)


def test_unknown_option_is_refused():
    with pytest.raises(ConfigError, match="beam_width"):
        majority(_problem(["Answer: 5"]), n=2, beam_width=4)
