"""Self-correction (RISE arXiv 2407.18219, SCoRe arXiv 2409.12917 style) and reflection
(Retroformer arXiv 2308.02151 style) examples from episodes where a failure was followed by a success.

**self-correction**: trial ``j-1`` failed and trial ``j`` succeeded. The example is the prompt
the actor gets at inference on a second attempt, then the successful answer:

- ``feedback`` variant, retry-feedback's prompt: ``ReflexionPrompts().actor(observation,
  exemplars=..., last_attempt=<failed answer>, last_feedback=<the env's feedback>)``;
- ``reflection`` variant, Reflexion's prompt, when the episode has reflections: the same with
  ``reflections=`` those written before trial ``j``.

The failed attempt and its feedback are quoted inside the task's user turn, as the agents quote
them, so no loss is ever taken on the failed attempt; the worked examples' assistant turns are
context (``"train": False``); only the corrected answer is trained. An episode of ``retry`` (which
saw no feedback) still yields the ``feedback`` variant: the failed attempt, the env's feedback on
it and a later success are all real, only the pairing is made here.

**reflection**: a reflection on trial ``k`` that was followed by a success at trial ``k + 1``, as
the target of the reflect prompt the agent used: ``ReflexionPrompts().reflect(observation,
failed attempt, feedback)``, or ``EmbodiedPrompts().reflect(task, steps, outcome)`` for the
embodied agents. The target is the reflection as stored (cleaned by ``parse_reflection``).

Example:
    >>> from ponder.training.data_source import Options, Source
    >>> ep = {"run": "r", "episode_id": "e", "agent": "reflexion", "env": "math", "task_id": "math/L1/0",
    ...       "observation": "What is 9 + 4?",
    ...       "trials": [{"trial": 0, "action": "Answer: 12", "feedback": "Wrong.", "success": False,
    ...                   "reflection": "I added wrong."},
    ...                  {"trial": 1, "action": "Answer: 13", "success": True}]}
    >>> src = Source("mem", "memory", [ep])
    >>> [c.examples[0].source["variant"] for c in self_correction(src, ep, Options())]
    ['feedback', 'reflection']
    >>> (c,) = reflection(src, ep, Options())
    >>> c.examples[0].messages[-1]["content"]
    'I added wrong.'
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ponder.agents.embodied_prompts import EmbodiedPrompts
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

__all__ = ["VARIANTS", "paired_correction", "reflection", "self_correction"]

#: the self-correction prompts: retry-feedback's and Reflexion's
VARIANTS = ("feedback", "reflection")
PROMPTS = ReflexionPrompts()
EMBODIED_PROMPTS = EmbodiedPrompts()


def self_correction(source: Source, episode: dict[str, Any], opts: Options) -> Iterator[Candidate]:
    """A candidate per variant for each failed trial followed at once by a successful one."""
    if is_embodied(episode):
        raise Skip("embodied agent (its trials are step lists, not one answer)")
    trials, ok = episode["trials"], source.outcomes(episode, opts.grade)
    pairs = [
        j
        for j in range(1, len(trials))
        if ok[j] and not ok[j - 1] and str(trials[j].get("action", "")).strip()
    ]
    if not pairs:
        raise Skip("no failed trial followed by a success")
    obs = observation(episode)
    exemplars, how = source.exemplars(episode)
    made = 0
    for j in pairs:
        bad, good = trials[j - 1], trials[j]
        reflections = [str(t["reflection"]) for t in trials[:j] if t.get("reflection")]
        for variant in opts.variants:
            if variant == "reflection" and not reflections:
                continue
            prompt = PROMPTS.actor(
                obs,
                reflections if variant == "reflection" else (),
                exemplars=exemplars,
                last_attempt=str(bad.get("action", "")),
                last_feedback=str(bad.get("feedback", "")),
            )
            answer = str(good["action"])
            src = source.provenance(
                episode,
                [bad.get("trial"), good.get("trial")],
                grade=opts.grade,
                exemplars=how,
                variant=variant,
            )
            msgs = [*prompt_messages(prompt), {"role": "assistant", "content": answer}]
            key = f"{variant}|{normalise(bad.get('action', ''))}|{normalise(answer)}"
            made += 1
            yield Candidate([ChatExample(msgs, "self-correction", src)], task_key(episode), key)
    if not made:
        raise Skip("no reflection before the success (only the reflection variant was asked for)")


def paired_correction(
    pool: list[tuple[Source, dict[str, Any]]], opts: Options, skipped: Any
) -> Iterator[Candidate]:
    """RISE-style pairs across episodes: a failed attempt at a task (any trial of any episode),
    the env's feedback on it, and a successful answer to the same task from another sample.

    The prompt is retry-feedback's second-attempt prompt (the ``feedback`` variant of
    ``self_correction``), so the model learns to answer differently after "incorrect" even where
    no single episode corrected itself; both attempts are the policy's own (RISE pairs the failure
    with a better sample of the same model). ``skipped`` counts the tasks left out and why.
    """
    by_task: dict[str, list[tuple[Source, dict[str, Any]]]] = {}
    for src, ep in pool:
        if is_embodied(ep):
            skipped["embodied agent (its trials are step lists, not one answer)"] += 1
            continue
        by_task.setdefault(task_key(ep), []).append((src, ep))
    for task, episodes in by_task.items():
        bad, good = [], []
        for src, ep in episodes:
            for t, ok in zip(ep["trials"], src.outcomes(ep, opts.grade), strict=False):
                if str(t.get("action", "")).strip():
                    (good if ok else bad).append((src, ep, t))
        if not bad or not good:
            skipped["no failed and successful attempt of the task both"] += 1
            continue
        for src, ep, t in bad:
            obs = observation(ep)
            exemplars, how = src.exemplars(ep)
            prompt = PROMPTS.actor(
                obs,
                (),
                exemplars=exemplars,
                last_attempt=str(t.get("action", "")),
                last_feedback=str(t.get("feedback", "")),
            )
            for gsrc, gep, g in good:
                answer = str(g["action"])
                if normalise(answer) == normalise(t.get("action", "")):
                    continue
                origin = src.provenance(
                    ep, [t.get("trial")], grade=opts.grade, exemplars=how, variant="feedback"
                )
                origin["corrected_by"] = gsrc.provenance(gep, [g.get("trial")], grade=opts.grade)
                msgs = [*prompt_messages(prompt), {"role": "assistant", "content": answer}]
                key = f"{normalise(t.get('action', ''))}|{normalise(answer)}"
                yield Candidate([ChatExample(msgs, "paired-correction", origin)], task, key)


def reflection(source: Source, episode: dict[str, Any], opts: Options) -> Iterator[Candidate]:
    """A candidate per reflection that was followed by a success on the next trial."""
    trials = episode.get("trials") or []
    if not any(t.get("reflection") for t in trials):
        raise Skip("no reflections (the agent does not reflect, or never failed)")
    ok = source.outcomes(episode, opts.grade)
    found = [k for k in range(len(trials) - 1) if trials[k].get("reflection") and not ok[k] and ok[k + 1]]
    if not found:
        raise Skip("no reflection followed by a success")
    embodied = is_embodied(episode)
    if embodied and any("steps" not in trials[k] for k in found):
        raise Skip("embodied memory record keeps no steps: pass the run directory")
    obs = observation(episode)
    for k in found:
        t = trials[k]
        if embodied:
            task = str(episode.get("task_text") or source.env(episode["env"]).task_text(obs))
            prompt = EMBODIED_PROMPTS.reflect(task, t["steps"], str(t.get("feedback", "")))
        else:
            prompt = PROMPTS.reflect(obs, str(t.get("action", "")), str(t.get("feedback", "")))
        text = str(t["reflection"])
        src = source.provenance(episode, [t.get("trial"), trials[k + 1].get("trial")], grade=opts.grade)
        msgs = [*prompt_messages(prompt), {"role": "assistant", "content": text}]
        yield Candidate([ChatExample(msgs, "reflection", src)], task_key(episode), normalise(text))
