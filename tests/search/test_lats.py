"""LATS: LM value with self-consistency, width 5, rollouts, env reward (an oracle), reflections."""

from __future__ import annotations

import pytest

from ponder.errors import ConfigError
from ponder.models.types import Message, Prompt
from ponder.search import lats
from ponder.search.base import split_steps
from ponder.search.lats import REFLECTION_SYSTEM, VALUE_PREFIX, VALUE_SYSTEM, parse_rating, with_reflections

LESSON = "LESSON: 2 + 3 is 5, not 6; check the sum."


def reply(prompt: Prompt) -> str:
    if prompt.messages[0].content == REFLECTION_SYSTEM:
        return LESSON
    if prompt.assistant_prefix == VALUE_PREFIX:
        return "5"
    done = split_steps(prompt.assistant_prefix)
    informed = LESSON in prompt.messages[-1].content
    if not done:
        return ("2 + 3 = 5." if informed else "2 + 3 = 6.") + "\n\n"
    return "Answer: 5" if informed else "Answer: 6"


def evaluate(text: str) -> tuple[bool, str]:
    ok = text.strip().endswith("Answer: 5")
    return ok, "Correct." if ok else "The final answer 6 is wrong (too high)."


def test_reflection_after_failure_reaches_the_next_expansion(make_problem):
    problem = make_problem(reply, {}, evaluate=evaluate)
    result = lats(problem, n=2, iterations=4)
    assert result.oracle  # the env's verifier decided: an oracle result
    tree = result.tree
    failed = [x for x in tree.terminals() if tree[x].get("reward") == 0.0]
    assert failed and tree[failed[0]]["note"] == LESSON
    prompts = [p for p in problem.policy.prompts if p.assistant_prefix != VALUE_PREFIX]
    at = next(i for i, p in enumerate(prompts) if p.messages[0].content == REFLECTION_SYSTEM)
    # the reflection prompt quotes the failed solution and the env feedback as data
    asked = prompts[at].messages[-1].content
    assert "<attempt>\n2 + 3 = 6.\n\nAnswer: 6\n</attempt>" in asked and "too high" in asked
    assert all(LESSON not in p.messages[-1].content for p in prompts[:at])
    assert prompts[at + 1].messages[-1].content.count(LESSON) == 1
    # stops at the first success
    assert result.answer == "5"
    assert [c["answer"] for c in result.candidates if c["reward"] == 1.0] == ["5", "5"]
    assert result.steps[-1] == "Answer: 5"
    assert tree[0]["visits"] == 2  # one failed iteration, one that succeeded and stopped the search


def test_parse_rating():
    assert [parse_rating(t) for t in ["8", " 3 out of 10", "10/10", "zero", "0", "11", "2.5"]] == [
        0.8,
        0.3,
        1.0,
        None,
        None,
        None,
        None,
    ]


def test_lats_without_env_feedback_names_the_fix(make_problem):
    with pytest.raises(ConfigError, match="evaluate="):
        lats(make_problem(reply, {}), n=2)


def test_with_reflections_appends_to_the_task_message():
    prompt = Prompt(
        (Message("system", "S"), Message("user", "Q1"), Message("assistant", "A1"), Message("user", "Q2"))
    )
    out = with_reflections(prompt, ["first", "second"])
    assert out.messages[:3] == prompt.messages[:3]
    assert out.messages[3].content.startswith("Q2") and "- first\n- second" in out.messages[3].content
    assert with_reflections(prompt, []) is prompt


# ---- the paper's parts: LM value with self-consistency, width 5, rollouts, env reward as oracle ----


def rated(ratings: dict[str, str], steps: dict[tuple[str, ...], list[str]]):
    """A script: step replies by the partial solution, a rating by the step being rated."""
    seen: dict[tuple[str, ...], int] = {}

    def reply(prompt: Prompt) -> str:
        if prompt.assistant_prefix == VALUE_PREFIX:
            solution = prompt.messages[-1].content.split("<solution>\n")[1].split("\n</solution>")[0]
            return ratings.get(split_steps(solution)[-1], "5")
        if prompt.messages[0].content == REFLECTION_SYSTEM:
            return LESSON
        done = tuple(split_steps(prompt.assistant_prefix))
        options = steps.get(done, ["Answer: 0"])
        seen[done] = seen.get(done, -1) + 1
        step = options[seen[done] % len(options)]
        return step if step.startswith("Answer") else step + "\n\nmore"

    return reply


STEPS = {
    (): ["bad start", "good start", "good start", "odd start", "bad start"],
    ("good start",): ["good middle"],
    ("bad start",): ["bad middle"],
    ("odd start",): ["odd middle"],
    ("good start", "good middle"): ["Answer: 5"],
    ("bad start", "bad middle"): ["Answer: 6"],
    ("odd start", "odd middle"): ["Answer: 7"],
}


def test_the_policy_values_steps_and_self_consistency_counts(make_problem):
    problem = make_problem(
        rated({"good start": "9", "bad start": "2", "odd start": "4"}, STEPS), evaluate=evaluate
    )
    result = lats(problem, iterations=1, value_samples=2)
    tree = result.tree
    kids = tree.children(0)
    # the paper's width: 5 children per expansion, from one call with n = 5
    assert len(kids) == 5 and problem.policy.calls[0] == ([()], 5)
    by_step = {tree[x]["step"]: tree[x] for x in kids}
    assert by_step["good start"]["lm_value"] == pytest.approx(0.9)
    # V = 0.5 * LM + 0.5 * SC; "good start" was sampled 2 times in 5, "odd start" once
    assert by_step["odd start"]["value"] == pytest.approx(0.5 * 0.4 + 0.5 * 1 / 5)
    # value prompts: one call for the 5 children, 2 ratings each, the rating read after VALUE_PREFIX
    value_calls = [p for p in problem.policy.prompts if p.assistant_prefix == VALUE_PREFIX]
    assert len(value_calls) >= 5 and all(p.messages[0].content == VALUE_SYSTEM for p in value_calls)
    # the rollout followed the best-valued child to a finished solution the env accepted
    assert result.answer == "5" and result.steps == ["good start", "good middle", "Answer: 5"]
    assert result.oracle and "problem.evaluate" in result.oracle_sources[0]
    assert result.tree[0]["visits"] == 1  # one iteration: expansion + rollout + backup
    assert all(tree[x]["score"] is None for x in tree.graph)  # no PRM was asked


def test_rollout_width_and_the_prm_as_value(make_problem):
    scores = {"good start": 0.9, "bad start": 0.1, "odd start": 0.2, "good middle": 0.8}
    problem = make_problem(rated({}, STEPS), scores, evaluate=evaluate)
    result = lats(problem, iterations=1, value="prm", rollout_width=2)
    # expansion with n = 5, then the rollout draws 2 per step
    assert [n for _, n in problem.policy.calls] == [5, 2, 2]
    assert not any(p.assistant_prefix == VALUE_PREFIX for p in problem.policy.prompts)
    assert result.answer == "5" and result.tree[result.tree.children(0)[1]]["score"] == 0.9


def test_honest_lats_never_asks_the_verifier(make_problem):
    asked: list[str] = []

    def spy(text: str) -> tuple[bool, str]:
        asked.append(text)
        return evaluate(text)

    problem = make_problem(
        rated({"good start": "9", "bad start": "2", "Answer: 6": "2", "Answer: 5": "9"}, STEPS), evaluate=spy
    )
    result = lats(problem, iterations=3, use_env_reward=False)
    assert asked == [] and not result.oracle and result.oracle_sources == []
    assert result.to_dict(with_tree=False)["oracle"] is False
    assert result.answer == "5"  # the best-valued finished solution


def test_a_low_valued_finished_solution_gets_a_reflection_without_the_env(make_problem):
    steps = {(): ["Answer: 6"]}
    problem = make_problem(rated({"Answer: 6": "2"}, steps))  # no evaluate at all
    result = lats(problem, n=1, iterations=2, use_env_reward=False)
    failed = result.tree.terminals()[0]
    assert result.tree[failed]["note"] == LESSON and not result.oracle
    reflection = next(p for p in problem.policy.prompts if p.messages[0].content == REFLECTION_SYSTEM)
    assert "own rating" in reflection.messages[-1].content  # no checker feedback to quote
    # the lesson reaches later value prompts too
    later = [p for p in problem.policy.prompts if p.assistant_prefix == VALUE_PREFIX]
    assert later and LESSON in later[-1].messages[-1].content


def test_prm_value_without_a_prm_names_the_fix(make_problem):
    problem = make_problem(reply, {}, evaluate=evaluate)
    problem.prm = None
    with pytest.raises(ConfigError, match="value='lm'"):
        lats(problem, value="prm")
    with pytest.raises(ConfigError, match="lm_weight"):
        lats(make_problem(reply, {}, evaluate=evaluate), lm_weight=2)
