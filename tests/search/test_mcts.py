"""MCTS: UCT or PUCT selection, PRM evaluation, values backed up as running means, oracle marking."""

from __future__ import annotations

import dataclasses
import math

import pytest

from ponder.errors import ConfigError
from ponder.search import mcts
from ponder.search.best_of_n import path_value
from ponder.search.mcts import puct, set_priors
from ponder.search.tree import SearchTree
from tests.search.conftest import CountingPolicy, StepScript

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


# ---- OpenR-style PUCT: a prior from the policy's log-probabilities, optional root noise ----


class LogprobPolicy(CountingPolicy):
    """Scripted steps with a per-token log-probability for each step text (PUCT's prior)."""

    def __init__(self, script, logprob: dict[str, float]):
        super().__init__(script)
        self.logprob = logprob
        self.asked: list[bool] = []

    def _generate(self, prompts, params):
        self.asked.append(params.logprobs)
        rows = super()._generate(prompts, params)
        return [
            [
                dataclasses.replace(
                    c, logprobs=(self.logprob.get(c.text.strip(), -3.0),) * max(1, c.completion_tokens)
                )
                if params.logprobs
                else c
                for c in row
            ]
            for row in rows
        ]


def test_puct_priors_come_from_the_policys_logprobs(make_problem):
    table = {(): ["a", "b"], ("a",): ["Answer: 9"], ("b",): ["Answer: 5"]}
    problem = make_problem(table, {"a": 0.5, "b": 0.5, "Answer: 9": 0.2, "Answer: 5": 0.9}, max_steps=3)
    problem.policy = LogprobPolicy(StepScript(table), {"a": -0.1, "b": -2.0})
    result = mcts(problem, n=2, iterations=3, selection="puct")
    tree = result.tree
    a, b = tree.children(0)
    # softmax over the siblings' mean token logprob (each step is 1 token here)
    assert tree[a]["prior"] == pytest.approx(math.exp(-0.1) / (math.exp(-0.1) + math.exp(-2.0)))
    assert tree[a]["prior"] + tree[b]["prior"] == pytest.approx(1.0)
    assert all(problem.policy.asked)  # PUCT asks for logprobs; UCT does not
    # equal PRM values: the prior decides the first visit
    assert tree[a]["visits"] >= tree[b]["visits"] and tree[a]["visits"] >= 1
    assert puct(tree, 0, a) == pytest.approx(
        tree[a]["value"]
        + (math.log((tree[0]["visits"] + 19652 + 1) / 19652) + 1.25)
        * tree[a]["prior"]
        * math.sqrt(tree[0]["visits"])
        / (1 + tree[a]["visits"])
    )
    uct_problem = make_problem(table, {"a": 0.5, "b": 0.5}, max_steps=3)
    uct_problem.policy = LogprobPolicy(StepScript(table), {})
    mcts(uct_problem, n=2, iterations=3)
    assert not any(uct_problem.policy.asked)


def test_no_logprobs_give_a_uniform_prior_and_noise_is_seeded(make_problem):
    def run(seed, weight):
        problem = make_problem(TABLE, SCORES, max_steps=3, seed=seed)
        return mcts(problem, n=2, iterations=2, selection="puct", dirichlet_weight=weight).tree

    plain = run(0, 0.0)
    assert [plain[x]["prior"] for x in plain.children(0)] == [0.5, 0.5]  # ScriptedPolicy: no logprobs
    noisy = [run(0, 0.25), run(0, 0.25), run(1, 0.25)]
    priors = [[t[x]["prior"] for x in t.children(0)] for t in noisy]
    assert priors[0] == priors[1] != priors[2]  # same seed, same noise
    assert all(sum(p) == pytest.approx(1.0) and p != [0.5, 0.5] for p in priors)
    # noise only at the root
    assert all(plain[x]["prior"] == noisy[0][x]["prior"] for x in noisy[0].graph if noisy[0][x]["depth"] == 2)


def test_set_priors_by_sum_and_bad_options(make_problem):
    tree = SearchTree()
    for text, lp, tokens in [("a", -1.0, 1), ("b", -1.5, 3)]:
        x = tree.add(0, text, tokens=tokens)
        tree[x]["logprob"] = lp
    set_priors(tree, 0, how="sum")
    assert tree[1]["prior"] > tree[2]["prior"]
    set_priors(tree, 0, how="mean")  # -1.0 vs -0.5 per token: b is likelier per token
    assert tree[1]["prior"] < tree[2]["prior"]
    with pytest.raises(ConfigError, match="selection"):
        mcts(make_problem(TABLE, SCORES), selection="alphazero")
    with pytest.raises(ConfigError, match="prior"):
        mcts(make_problem(TABLE, SCORES), selection="puct", prior="max")


def test_env_reward_makes_an_oracle_result(make_problem):
    honest = mcts(make_problem(TABLE, SCORES, max_steps=3, evaluate=lambda t: (True, "")), n=2, iterations=4)
    assert not honest.oracle and honest.to_dict(with_tree=False)["oracle"] is False
    oracle = mcts(
        make_problem(TABLE, SCORES, max_steps=3, evaluate=lambda t: (True, "")),
        n=2,
        iterations=4,
        use_env_reward=True,
    )
    assert oracle.oracle and oracle.to_dict(with_tree=False)["oracle_sources"]
