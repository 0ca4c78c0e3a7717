"""LATS: a failed solution gets a reflection, and later expansions see it."""

from __future__ import annotations

import pytest

from ponder.errors import ConfigError
from ponder.models.types import Message, Prompt
from ponder.search import lats
from ponder.search.base import split_steps
from ponder.search.lats import REFLECTION_SYSTEM, with_reflections

LESSON = "LESSON: 2 + 3 is 5, not 6; check the sum."


def reply(prompt: Prompt) -> str:
    if prompt.messages[0].content == REFLECTION_SYSTEM:
        return LESSON
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
    tree = result.tree
    failed = [x for x in tree.terminals() if tree[x].get("reward") == 0.0]
    assert failed and tree[failed[0]]["note"] == LESSON
    prompts = problem.policy.prompts
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
