"""Step-by-step prompts for search on an environment's task, and the problem built from them.

Search extends solutions one step at a time, so the model must write steps the separator can
find: the prompt asks for one step per paragraph and shows the env's worked examples in that
form (``TextEnv.step_examples``).

Example:
    >>> from ponder.environments import make
    >>> from ponder.models import ScriptedPolicy
    >>> env = make("math", level=4, num_tasks=1)
    >>> obs, _ = env.reset(options={"task_id": "math/L4/0"})
    >>> prompt = step_prompt(env, "math/L4/0", obs)
    >>> prompt.messages[2].content.count("\\n\\n") >= 2   # a worked example, one step per paragraph
    True
"""

from __future__ import annotations

from typing import Any

from ponder.models.types import Message, Prompt
from ponder.search.base import DEFAULT_SEPARATOR, SearchProblem

__all__ = ["STEP_SYSTEM", "problem_for_task", "step_prompt"]

STEP_SYSTEM = (
    "You are a careful problem solver. Solve the problem step by step: one short step per "
    "paragraph, with a blank line between steps, and end with the final answer line."
)


def step_prompt(env: Any, task_id: str, observation: str, separator: str = DEFAULT_SEPARATOR) -> Prompt:
    """System, the env's worked examples written as steps, then the task."""
    msgs = [Message("system", STEP_SYSTEM)]
    for q, a in env.step_examples(task_id, separator):
        msgs += [Message("user", q), Message("assistant", a)]
    msgs.append(Message("user", observation.strip()))
    return Prompt(tuple(msgs))


def problem_for_task(
    env: Any,
    task_id: str,
    policy: Any,
    prm: Any = None,
    *,
    seed: int = 0,
    separator: str = DEFAULT_SEPARATOR,
    **kw: Any,
) -> SearchProblem:
    """A ``SearchProblem`` for one task of ``env``: step prompt, the task text for the PRM, and
    the env's ``answer_key`` for voting. ``kw`` goes to ``SearchProblem`` (``params``, ``budget``, ...).
    """
    obs, _ = env.reset(seed=seed, options={"task_id": task_id})
    kw.setdefault("evaluate", env.verifier(task_id, seed))
    kw.setdefault("evaluate_reads_answer", getattr(env, "verifier_reads_answer", True))
    return SearchProblem(
        step_prompt(env, task_id, obs, separator),
        policy,
        prm,
        question=env.task_text(obs),
        separator=separator,
        answer_of=env.answer_key,
        seed=seed,
        **kw,
    )
