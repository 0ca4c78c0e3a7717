"""Equal compute, enforced: no algorithm passes its generated-token budget by more than one
sample's ``max_tokens``; a judge PRM's tokens are charged; sampling methods share one sample set."""

from __future__ import annotations

import itertools
import zlib

import pytest

from ponder.models import ScriptedPolicy
from ponder.models.prm import FunctionPRM
from ponder.models.prm_oracle import LLMJudgePRM
from ponder.models.types import Prompt, SamplingParams
from ponder.search import ALGORITHMS, sample_and_score
from ponder.search.base import SearchProblem, split_steps
from ponder.search.best_of_n import SAMPLED_METHODS
from ponder.search.budget import Budget
from ponder.search.lats import REFLECTION_SYSTEM, VALUE_SYSTEM

STEP_TOKENS = 16
MAX_STEPS = 6
BUDGETS = (50, 100, 300)

#: options that make each algorithm want far more than the largest budget
WANTS_MORE = {
    "majority": {"n": 64},
    "best_of_n": {"n": 64},
    "weighted_best_of_n": {"n": 64},
    "beam": {"n": 16, "beam_width": 4},
    "dvts": {"n": 16, "beam_width": 2},
    "mcts": {"n": 4, "iterations": 500},
    "lats": {"n": 5, "iterations": 500},
    "tot_bfs": {"n": 8, "breadth": 4},
    "tot_dfs": {"n": 4, "value_threshold": 0.0, "solutions": 1000, "max_expansions": 500},
}
WHOLE_SOLUTION = ("majority", "best_of_n", "weighted_best_of_n")


def long_solutions():
    """Steps of 13 tokens, 4 of them and an answer line; lats' value and reflection prompts
    get a rating and a lesson. Every sample differs a little."""
    counter = itertools.count()

    def reply(prompt: Prompt) -> str:
        system = prompt.messages[0].content
        if system == VALUE_SYSTEM:
            return "6"
        if system == REFLECTION_SYSTEM:
            return "Check each sum twice before answering, and write every step in full next time."
        done = split_steps(prompt.assistant_prefix)
        k = next(counter)
        rest = [f"Step {d + 1}: we add {k % 7} and {d} to get {k % 7 + d} here." for d in range(len(done), 4)]
        return "\n\n".join([*rest, f"Answer: {5 + k % 2}"])

    return reply


def varied_prm() -> FunctionPRM:
    return FunctionPRM(lambda q, steps: (zlib.crc32(steps[-1].encode()) % 100) / 100)


def problem_with(budget: int | None, prm=None, policy=None) -> SearchProblem:
    return SearchProblem(
        Prompt.user("What is 2 + 3?"),
        policy or ScriptedPolicy(long_solutions()),
        prm or varied_prm(),
        params=SamplingParams(max_tokens=STEP_TOKENS, temperature=0.8),
        max_steps=MAX_STEPS,
        budget=Budget(max_generated_tokens=budget),
        evaluate=lambda text: (False, "The final answer is wrong."),  # never succeeds: lats runs on
    )


def one_sample(name: str) -> int:
    """The ``max_tokens`` of one sample: a whole solution for the sampling methods, else a step."""
    return STEP_TOKENS * MAX_STEPS if name in WHOLE_SOLUTION else STEP_TOKENS


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_no_algorithm_passes_its_budget_by_more_than_one_sample(name, budget):
    problem = problem_with(budget)
    result = ALGORITHMS[name](problem, **WANTS_MORE[name])
    spent = result.budget["generated_tokens"]
    assert spent == problem.policy.usage.completion_tokens  # every token generated was charged
    assert result.budget["exhausted"], f"{name} stopped before its budget: the test must make it bind"
    assert budget <= spent <= budget + one_sample(name) - 1, (name, budget, spent)
    assert result.budget["max_generated_tokens"] == budget


@pytest.mark.parametrize("name", ["beam", "dvts", "tot_bfs"])
def test_batching_is_kept_while_the_budget_allows(name):
    problem = problem_with(10_000)
    ALGORITHMS[name](problem, **WANTS_MORE[name])
    unlimited = problem_with(None)
    ALGORITHMS[name](unlimited, **WANTS_MORE[name])
    # a budget that never binds changes nothing: same calls, same samples
    assert problem.budget.policy_calls == unlimited.budget.policy_calls
    assert problem.budget.generated_tokens == unlimited.budget.generated_tokens


def test_whole_solutions_are_drawn_in_batched_rounds_within_the_budget():
    problem = problem_with(300)
    tree_result = sample_and_score(problem, 64)["majority"]
    calls = problem.budget.policy_calls
    # 300 // 96 = 3 worst-case solutions fit at first: rounds of 3, then fewer, not 64 calls of 1
    assert 1 < calls < len(tree_result.candidates)
    assert len(tree_result.candidates) * 55 >= 300  # each solution is 55 tokens: it drew until spent


def test_judge_tokens_are_charged_as_generated_and_reported_apart():
    judge_policy = ScriptedPolicy(["Verdict: correct"], cycle=True)  # 3 tokens
    for budget in BUDGETS:
        judge = LLMJudgePRM(judge_policy, params=SamplingParams(max_tokens=4))
        problem = problem_with(budget, prm=judge)
        before = judge_policy.usage.completion_tokens
        result = ALGORITHMS["beam"](problem, n=4, beam_width=2)
        judged = judge_policy.usage.completion_tokens - before
        assert result.budget["judge_tokens"] == judged == judge.usage.generated
        if budget == 50:  # the first 4 steps (52 tokens) spend it all: nothing left to judge
            assert judged == 0 and judge.usage.ungraded == 4
        else:
            assert judged > 0
        assert result.budget["generated_tokens"] == problem.policy.usage.completion_tokens + judged
        # the judge never passes the limit; only a policy step may, by less than its max_tokens
        assert result.budget["generated_tokens"] <= budget + STEP_TOKENS - 1


def test_judge_within_an_allowance_grades_what_fits_and_leaves_the_rest_neutral():
    policy = ScriptedPolicy(["Verdict: incorrect"], cycle=True)
    judge = LLMJudgePRM(policy, params=SamplingParams(max_tokens=4))
    out = judge.score_within("q", [["a", "b", "c"]], max_generated=9)  # room for 2 gradings of 4
    assert out.scores == [[0.0, 0.0, 0.5]] and out.ungraded == 1
    assert out.generated == policy.usage.completion_tokens == 6  # "Verdict: incorrect" is 3 tokens
    # graded prefixes are cached: asking again costs nothing, and the third is graded now
    again = judge.score_within("q", [["a", "b", "c"]], max_generated=4)
    assert again.scores == [[0.0, 0.0, 0.0]] and again.generated == 3
    assert judge.usage.generated == 9 and judge.usage.ungraded == 1
    assert judge.score_within("q", [["x"]], max_generated=0).scores == [[0.5]]


def test_sample_and_score_reads_three_methods_off_one_sample_set():
    problem = problem_with(None)
    out = sample_and_score(problem, 8)
    assert list(out) == list(SAMPLED_METHODS)
    steps = {m: [c["steps"] for c in r.candidates] for m, r in out.items()}
    assert steps["majority"] == steps["best_of_n"] == steps["weighted_best_of_n"]
    assert len({r.budget["generated_tokens"] for r in out.values()}) == 1
    assert problem.budget.policy_calls == 1 and problem.budget.prm_calls == 1
    # majority does not use the PRM: no scores on its tree, and its budget is the one before scoring
    assert all(c["score"] is None for c in out["majority"].candidates)
    assert out["majority"].budget["prm_calls"] == 0 and out["best_of_n"].budget["prm_calls"] == 1
    # each result marks its own chosen path on its own copy of the tree
    for r in out.values():
        chosen = [x for x in r.tree.graph if r.tree[x]["chosen"]]
        assert r.tree.steps(chosen[-1]) == r.steps


def test_sample_and_score_at_a_budget_is_the_same_as_each_method_alone():
    alone = {m: ALGORITHMS[m](problem_with(200), n=64) for m in SAMPLED_METHODS}
    together = sample_and_score(problem_with(200), 64)
    for m in SAMPLED_METHODS:
        assert together[m].answer == alone[m].answer and together[m].steps == alone[m].steps
        assert together[m].budget["generated_tokens"] == alone[m].budget["generated_tokens"]


def test_budget_plan_for_helper_calls_never_passes_the_limit():
    b = Budget(max_generated_tokens=20)
    assert b.samples_allowed(8, 4) == 5 and b.samples_allowed(3, 4) == 3
    b.charge_policy(generated=18)
    assert b.samples_allowed(8, 4) == 1 and b.tokens_allowed(96) == 2
    problem = problem_with(20)
    problem.budget.charge_policy(generated=18)
    assert problem.plan(3, 2, 96, may_pass=True) == (1, 1, 96)
    assert problem.plan(3, 2, 96, may_pass=False) == (1, 1, 2)
    rows = problem.generate([Prompt.user("a"), Prompt.user("b")], SamplingParams(n=2, max_tokens=96))
    assert len(rows) == 2 and len(rows[0]) == 1 and rows[1] == []
    assert problem.budget.generated_tokens <= 20
    assert problem.generate([Prompt.user("a")], SamplingParams()) == [[]]  # spent: nothing drawn
