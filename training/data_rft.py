"""Rejection-sampling examples (STaR, RFT arXiv 2308.01825): the task -> an answer that succeeded.

Every single-answer agent contributes its successful final answers: a trial of reflexion,
retry-feedback or retry that succeeded, the search agent's solution, the debate's winning
(aggregated) answer, the team's decided answer. The example is what the actor is asked at
inference, ``ReflexionPrompts().actor(observation, exemplars=env worked examples)``, followed by
the answer: the model learns to give, unaided, the answer that took feedback, reflection, a
search or a debate to find (expert iteration distils the improvement operator into the policy).
The worked examples' assistant turns are context (``"train": False``).

Example:
    >>> from ponder.training.data_source import Options, Source
    >>> ep = {"run": "r", "episode_id": "e", "agent": "retry", "env": "math", "task_id": "math/L1/0",
    ...       "observation": "What is 9 + 4?",
    ...       "trials": [{"trial": 0, "action": "Answer: 12", "success": False},
    ...                  {"trial": 1, "action": "Answer: 13", "success": True}]}
    >>> (c,) = rft(Source("mem", "memory", [ep]), ep, Options())
    >>> [(m["role"], m.get("train", True)) for m in c.examples[0].messages][-3:]
    [('assistant', False), ('user', True), ('assistant', True)]
    >>> c.examples[0].messages[-1]["content"], c.examples[0].source["trials"]
    ('Answer: 13', [1])
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ponder.agents.prompts import ReflexionPrompts
from ponder.training.data_source import (
    Candidate,
    Options,
    Skip,
    Source,
    is_embodied,
    normalise,
    observation,
    prompt_messages,
    task_key,
)
from ponder.training.examples import ChatExample

__all__ = ["rft"]

PROMPTS = ReflexionPrompts()


def rft(source: Source, episode: dict[str, Any], opts: Options) -> Iterator[Candidate]:
    """One candidate per successful trial of ``episode`` (at most one, for agents that stop on
    success; more under ``grade="final"`` when the hidden grade passed an earlier answer)."""
    if is_embodied(episode):
        raise Skip("embodied agent (its successes are embodied examples)")
    ok = source.outcomes(episode, opts.grade)
    wins = [
        t for t, good in zip(episode["trials"], ok, strict=True) if good and str(t.get("action", "")).strip()
    ]
    if not wins:
        raise Skip("no successful trial")
    obs = observation(episode)
    exemplars, how = source.exemplars(episode)
    prompt = prompt_messages(PROMPTS.actor(obs, exemplars=exemplars))
    for t in wins:
        answer = str(t["action"])
        src = source.provenance(episode, [t.get("trial")], grade=opts.grade, exemplars=how)
        example = ChatExample([*prompt, {"role": "assistant", "content": answer}], "rft", src)
        yield Candidate([example], task_key(episode), normalise(answer))
