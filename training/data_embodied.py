"""Embodied examples: the successful trials of the embodied agents, one example per step.

The embodied agent prompts with ONE user turn that holds everything (the task, its plan, its
last steps, what it sees now, the actions it may take: ``EmbodiedPrompts.act``) and the model
continues the assistant prefix ``Think:``. So a successful trial becomes one example per step:
the act prompt as the agent saw it at that step -> ``Think: <thought>\\nAction: <action>``.

The prompt is rebuilt faithfully by replaying the trial: the run's env is rebuilt from its
``config.yaml``, reset with the episode's seed and task, and stepped through the recorded
actions, which gives the admissible actions the agent was shown at each step (ranked to the
``max_actions`` most related ones with the run's embedder when there were more, as the agent
does); each replayed observation must equal the recorded one, or the trial is skipped. The
reflections of earlier trials and the trial's plan are shown as the agent showed them.

Choices:

- the target action is the one executed (the grounded, admissible action that led to the
  success), not the free text the model wrote before grounding: the model learns to name
  admissible actions exactly;
- every step of a successful trial is trained, detours included (behaviour cloning of the
  trajectory the env verified);
- plan-and-execute trials whose plan was revised mid-trial are skipped: the record keeps only
  the last plan, not the one each step saw;
- what memory recalled (lessons, notes) is not in the episode record and is left out of the
  prompt (the source says ``recalled_memory_omitted`` when the run recalled any).

Example:
    >>> reply_text({"thought": "I need the key.", "action": "take key"})
    'Think: I need the key.\\nAction: take key'
    >>> reply_text({"thought": "", "action": "open chest"})
    'Think:\\nAction: open chest'
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ponder.agents.embodied_prompts import EmbodiedPrompts
from ponder.agents.grounding import Grounder
from ponder.errors import EnvError
from ponder.training.data_source import (
    Candidate,
    Options,
    Skip,
    Source,
    is_embodied,
    normalise,
    prompt_messages,
    task_key,
)
from ponder.training.examples import ChatExample

__all__ = ["embodied", "reply_text"]

PROMPTS = EmbodiedPrompts()


def reply_text(step: dict[str, Any]) -> str:
    """The reply a step is trained on: the assistant prefix with the thought, then the action."""
    thought = " ".join(str(step.get("thought", "")).split())
    return f"{PROMPTS.act_prefix} {thought}".rstrip() + f"\nAction: {step['action']}"


def embodied(source: Source, episode: dict[str, Any], opts: Options) -> Iterator[Candidate]:
    """One candidate per successful trial of an embodied episode: its steps' examples."""
    if not is_embodied(episode):
        raise Skip("not an embodied agent")
    if source.cfg is None:
        raise Skip("embodied memory record keeps no steps: pass the run directory")
    trials, ok = episode["trials"], source.outcomes(episode, opts.grade)
    wins = [i for i, good in enumerate(ok) if good and trials[i].get("steps")]
    if not wins:
        raise Skip("no successful trial")
    for i in wins:
        if trials[i].get("revisions"):
            raise Skip("plan revised during the trial (the plan each step saw is not recorded)")
        reflections = [str(t["reflection"]) for t in trials[:i] if t.get("reflection")]
        examples = _replay(source, episode, trials[i], reflections, opts)
        key = "|".join(normalise(s.get("action", "")) for s in trials[i]["steps"])
        yield Candidate(examples, task_key(episode), key)


def _replay(
    source: Source, episode: dict[str, Any], trial: dict[str, Any], reflections: list[str], opts: Options
) -> list[ChatExample]:
    """Step the rebuilt env through ``trial``'s actions; the act prompt of each step, answered."""
    assert source.cfg is not None
    env = source.env(episode["env"])
    grounder = _grounder(source)
    seed = episode.get("seed", source.cfg.seed)
    try:
        obs, info = env.reset(seed=seed, options={"task_id": episode["task_id"]})
    except (KeyError, EnvError) as e:
        raise Skip("task not in the run's env (was its config.yaml edited?)") from e
    task, last = env.task_text(obs), obs
    admissible = list(info.get("admissible_actions", []))
    steps, out = trial["steps"], []
    for k, step in enumerate(steps):
        shown = grounder.rank(f"{task}\n{last}", admissible, PROMPTS.max_actions)
        prompt = PROMPTS.act(
            task,
            last,
            shown,
            history=steps[:k],
            plan=trial.get("plan") or [],
            reflections=reflections,
            more_actions=len(admissible) - len(shown),
        )
        src = source.provenance(episode, [trial.get("trial")], grade=opts.grade, step=k, steps=len(steps))
        msgs = [*prompt_messages(prompt), {"role": "assistant", "content": reply_text(step)}]
        out.append(ChatExample(msgs, "embodied", src))
        try:
            obs, _, _, _, info = env.step(str(step["action"]))
        except EnvError as e:
            raise Skip("replay ended before the recorded steps (env or its version changed)") from e
        if obs != step.get("observation"):
            raise Skip("replay gave other observations than recorded (env or its version changed)")
        last, admissible = obs, list(info.get("admissible_actions", []))
    return out


class _LazyEmbedder:
    """The run's embedder, loaded only if some step had more actions than the prompt shows."""

    def __init__(self, name: str):
        self.name, self._ef = name, None

    def __call__(self, texts: list[str]) -> Any:
        if self._ef is None:
            from ponder.memory.embeddings import make_embedder

            self._ef = make_embedder(self.name)
        return self._ef(texts)


def _grounder(source: Source) -> Grounder:
    """One grounder per source, ranking long action lists with the run's embedder, as the
    agent's grounder (given the run memory's embedder) did."""
    assert source.cfg is not None
    if "grounder" not in source.cache:
        source.cache["grounder"] = Grounder(_LazyEmbedder(source.cfg.embedder))
    return source.cache["grounder"]
