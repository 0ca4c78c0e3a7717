"""Typed LangGraph state and runtime context shared by the single-agent graphs.

State holds what is checkpointed (text, numbers); the per-episode objects that are not
state (the env instance, seeds, provenance) come in through LangGraph's runtime
context, so one compiled graph serves many episodes at once.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from typing_extensions import Required, TypedDict

from ponder.environments.base import TextEnv
from ponder.errors import ConfigError

if TYPE_CHECKING:
    from ponder.memory import Memory, Provenance

__all__ = [
    "AgentContext",
    "EpisodeState",
    "MultiAgentState",
    "TrialRecord",
    "agent_provenance",
    "grade",
    "remember_reflection",
    "start_single_step",
]


class TrialRecord(TypedDict):
    """One attempt at the task."""

    trial: int
    action: str
    success: bool
    score: float
    feedback: str
    prompt_tokens: int
    completion_tokens: int


class EpisodeState(TypedDict, total=False):
    """What a Reflexion-family graph carries from node to node (and checkpoints).

    Lists and token counts have ``operator.add`` reducers: nodes return only what they add.
    ``Required`` keys are there for every node after the first: ``task_id`` is the input,
    ``observation`` and ``task_text`` are what the first node writes, and a reducer's key starts
    out empty (``[]``, ``0``). The rest appear when a node writes them.
    """

    task_id: Required[str]
    observation: Required[str]
    #: the observation without instructions every task shares: memory's search key
    task_text: Required[str]
    #: retrieved from memory (earlier runs): quoted to the model as data, never as instructions
    memory_notes: list[str]
    #: [task, answer] worked examples the env provides for this task
    examples: list[list[str]]
    #: [task, answer] pairs of similar solved episodes, shown as worked examples
    exemplars: list[list[str]]
    #: active insights shown to the actor (text and ids, in rank order)
    insights: list[str]
    shown_insights: list[str]
    #: the insight operations the episode's learning step applied
    insight_ops: list[str]
    #: an insight update asked for but not yet written to memory (``memory.insights.pending_update``)
    pending_insights: dict[str, Any] | None
    #: unit tests the model wrote for itself (``assert f(...) == ...`` lines; HumanEval)
    agent_tests: str
    #: the current attempt, before it is evaluated
    attempt: str
    attempt_tokens: tuple[int, int]
    trials: Required[Annotated[list[TrialRecord], operator.add]]
    reflections: Required[Annotated[list[str], operator.add]]
    success: bool
    #: one summary per search an actor ran (algorithm, answer, score, budget, tree file)
    searches: Required[Annotated[list[dict[str, Any]], operator.add]]
    prompt_tokens: Required[Annotated[int, operator.add]]
    completion_tokens: Required[Annotated[int, operator.add]]


class MultiAgentState(TypedDict, total=False):
    """What the debate and team graphs share: every agent's message, the answer, the verdict.

    ``Required`` keys are there for every node after the first (see ``EpisodeState``).
    """

    task_id: Required[str]
    observation: Required[str]
    task_text: Required[str]
    examples: list[list[str]]
    messages: Required[Annotated[list[dict[str, Any]], operator.add]]
    answer: str | None
    final: str
    success: bool
    trials: Required[Annotated[list[dict[str, Any]], operator.add]]
    prompt_tokens: Required[Annotated[int, operator.add]]
    completion_tokens: Required[Annotated[int, operator.add]]


@dataclass
class AgentContext:
    """Per-episode runtime context (``graph.invoke(..., context=AgentContext(...))``).

    Attributes:
        env: the environment instance this episode acts in.
        seed: base seed; trial ``k`` samples with a seed derived from it, the task and ``k``,
            so two agents given the same seed see the same first attempt.
        run_id: provenance for memory records.
        episode_id: provenance for memory records.
        artifacts: a directory for files an episode produces (search trees); None keeps none.
    """

    env: TextEnv
    seed: int = 0
    run_id: str = ""
    episode_id: str = ""
    artifacts: Path | None = None


def start_single_step(ctx: AgentContext, task_id: str, agent: str) -> dict[str, Any]:
    """Reset ``ctx.env`` on ``task_id`` for an agent that answers once: the observation, the
    task's own text and the env's worked examples; a multi-step env is refused in one line."""
    env = ctx.env
    if not env.single_step:
        raise ConfigError(
            f"{agent} grades one answer, but env {env.name!r} is multi-step; use an embodied agent"
        )
    obs, _ = env.reset(seed=ctx.seed, options={"task_id": task_id})
    return {
        "observation": obs,
        "task_text": env.task_text(obs),
        "examples": [list(p) for p in env.examples_for(task_id)],
    }


def grade(ctx: AgentContext, task_id: str, answer: str, trial: int, **extra: Any) -> dict[str, Any]:
    """One answer graded in a fresh episode of ``task_id`` (so a resumed thread with a new env
    object is graded right): the trial record ``{trial, action, success, score, feedback, ...}``."""
    ctx.env.reset(seed=ctx.seed, options={"task_id": task_id})
    _, reward, _, _, info = ctx.env.step(answer)
    return {
        "trial": trial,
        "action": answer,
        "success": bool(info["success"]),
        "score": float(info.get("score", reward)),
        "feedback": str(info.get("feedback", "")),
        **extra,
    }


def agent_provenance(ctx: AgentContext, task_id: str, agent: str, policy: Any = None) -> Provenance:
    """Provenance of text an agent wrote in this episode (untrusted: model text never is)."""
    from ponder.memory import Provenance

    return Provenance(
        run_id=ctx.run_id,
        episode_id=ctx.episode_id,
        env=ctx.env.name,
        task_id=task_id,
        agent=agent,
        model=getattr(policy, "name", "") if policy is not None else "",
        source="agent",
        trusted=False,
    )


def remember_reflection(
    memory: Memory,
    text: str,
    trial: Mapping[str, Any],
    ctx: AgentContext,
    task_id: str,
    agent: str,
    policy: Any = None,
    *,
    part: str = "",
) -> None:
    """Store a reflection on ``trial``; one id per (run, episode, trial, part), so a resumed node overwrites it."""
    import hashlib

    from ponder.memory import Reflection

    rid = hashlib.blake2b(f"{ctx.run_id}/{ctx.episode_id}/{trial['trial']}{part}".encode(), digest_size=12)
    memory.add(
        Reflection(
            text=text,
            failed_attempt=str(trial["action"])[:2000],
            feedback=trial["feedback"],
            trial=trial["trial"],
            provenance=agent_provenance(ctx, task_id, agent, policy),
            id=rid.hexdigest(),
        )
    )
