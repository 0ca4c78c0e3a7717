"""The embodied agent: a think/act loop in a multi-step env, Reflexion across trials, CLIN memory.

One trial is one episode of the env. Each turn the model reads the task, recalled lessons,
its recent steps, the observation and the admissible actions, replies ``Think: ... Action:
...`` (ReAct), and the action is grounded to an admissible one (``agents.grounding``: exact,
normalised, nearest by embedding; the mapping is kept in the trajectory). A failed trial is
reflected on (Reflexion) and the next trial sees the reflection. With ``memory_modes``
containing ``concept``, memory holds causal abstractions ("X may be necessary to Y", "X does not
contribute to Y"), learned one of three ways (``concept=``):

- ``"clin"``, CLIN as in its paper and code: after every trial the model *rewrites* the task's
  memory from the trial's trace and score and the memories of the last ``clin_k = 3`` trials
  (``memory.clin``); the new list replaces the old one, which is retired, not deleted;
- ``"clin-voted"``, CLIN-style: after every trial the model adds lessons and votes on the
  lessons shown, from the trial's last 15 steps (ExpeL's vote book, ``memory.insights``);
- ``"expel-frozen"``: ExpeL's rules extracted offline (``agents.expel``), shown, never changed.

A trial sees its task's lessons first, then (CLIN-style, or when its task has none yet) those
nearest to its task from other tasks.

``plan=True`` is plan-and-execute: a short plan is written before the first action, shown
every turn, and revised when an observation contradicts it (the action failed, or what the
model asked for was not available).

::

    start_trial -> [plan] -> act --(episode goes on)--> act
                              |  --(contradiction, plan)--> revise -> act
                              +--(episode over)--> end_trial --(success / last trial)--> END
                                                        +--> [reflect] -> start_trial (or END
                                                             after the last trial: stored only)

Example:
    >>> from ponder.agents import AgentContext
    >>> from ponder.agents.embodied import build_embodied_agent
    >>> from ponder.environments.toy_rooms import ToyRoomsEnv
    >>> from ponder.models import ScriptedPolicy
    >>> env = ToyRoomsEnv()
    >>> policy = ScriptedPolicy(["Think: the key first.\\nAction: take key", "Action: open the chest."])
    >>> graph = build_embodied_agent(policy, max_steps=5, max_trials=1)
    >>> out = graph.invoke({"task_id": "toy/chest"}, context=AgentContext(env=env))
    >>> [(s["action"], s["grounding"]["method"]) for s in out["trials"][0]["steps"]], out["success"]
    ([('take key', 'exact'), ('open chest', 'normalised')], True)
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import re
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Checkpointer
from typing_extensions import Required, TypedDict

from ponder.agents.embodied_prompts import EmbodiedPrompts, format_steps, parse_plan, parse_react
from ponder.agents.grounding import Grounder
from ponder.agents.memory_nodes import parse_memory_modes, remember_insights
from ponder.agents.prompts import parse_reflection
from ponder.agents.reflexion import trial_seed
from ponder.agents.state import AgentContext, agent_provenance, remember_reflection
from ponder.errors import ConfigError
from ponder.memory.clin import CLIN_K
from ponder.memory.records import Experience, Insight, Reflection
from ponder.memory.retrieval import Hit, is_trusted
from ponder.models.check import ensure_policy
from ponder.models.types import Completion, Policy, Prompt, SamplingParams

if TYPE_CHECKING:
    from ponder.environments.base import TextEnv
    from ponder.memory import Memory

__all__ = ["DEFAULT_CONCEPT", "EmbodiedState", "build_embodied_agent", "contradicts", "recursion_limit"]

log = logging.getLogger(__name__)

#: the ``concept`` mode when none is given (see the module docstring)
DEFAULT_CONCEPT = "clin"

#: observations that say an action did not do what was asked (ScienceWorld, TextWorld, ALFWorld wording)
FAILURE_PATTERNS = re.compile(
    r"no known action|not clear|can't|cannot|can not|don't see|do not see|not something|"
    r"nothing happens|isn't|is not open|is closed|you need|not possible|unknown|there is no|"
    r"doesn't|does not|already|locked|won't|will not|unable|failed",
    re.IGNORECASE,
)


class EmbodiedState(TypedDict, total=False):
    """What the embodied graph carries (and checkpoints); ``trials`` and tokens accumulate.

    ``Required`` keys are there for every node after ``start_trial``: ``task_id`` is the input, a
    reducer's key starts out empty, and ``start_trial`` writes the others.
    """

    task_id: Required[str]
    #: the first observation of the current trial, and the task's own text (memory key)
    observation: Required[str]
    task_text: Required[str]
    #: the current trial: its steps, the latest observation, admissible actions, score, end
    steps: Required[list[dict[str, Any]]]
    last_observation: Required[str]
    admissible: list[str]
    score: float
    trial_over: bool
    success: bool
    #: plan-and-execute
    plan: list[str]
    revisions: int
    #: recalled from memory when the episode starts
    insights: list[str]
    shown_insights: list[str]
    memory_notes: list[str]
    insight_ops: Required[Annotated[list[str], operator.add]]
    #: a concept update asked for but not yet written to memory (``memory.insights.pending_update``
    #: or ``memory.clin.pending_rewrite``)
    pending_insights: dict[str, Any] | None
    trials: Required[Annotated[list[dict[str, Any]], operator.add]]
    reflections: Required[Annotated[list[str], operator.add]]
    prompt_tokens: Required[Annotated[int, operator.add]]
    completion_tokens: Required[Annotated[int, operator.add]]


def contradicts(step: dict[str, Any], min_similarity: float = 0.5) -> bool:
    """Did this step go against the plan: the env refused it, or the wanted action was not on offer?

    Example:
        >>> contradicts({"observation": "The door is closed.", "reward": 0.0,
        ...              "grounding": {"method": "exact", "similarity": 1.0}})
        True
    """
    g = step.get("grounding", {})
    if g.get("method") == "similar" and float(g.get("similarity", 1.0)) < min_similarity:
        return True
    return float(step.get("reward", 0.0)) <= 0 and bool(
        FAILURE_PATTERNS.search(str(step.get("observation", "")))
    )


def recursion_limit(max_trials: int, max_steps: int, max_revisions: int = 0) -> int:
    """LangGraph supersteps an episode may need: one per action, plus a few per trial."""
    return 10 + max_trials * (max_steps + max_revisions + 7)


def build_embodied_agent(
    policy: Policy,
    *,
    memory: Memory | None = None,
    max_steps: int = 30,
    max_trials: int = 3,
    reflect: bool = True,
    plan: bool = False,
    max_revisions: int = 3,
    memory_modes: str | Sequence[str] = ("reflective", "concept"),
    memory_k: int = 5,
    concept: Literal["clin", "clin-voted", "expel-frozen"] | None = None,
    clin_k: int = CLIN_K,
    insight_set: str = "expel",
    embedder: Callable[[list[str]], Any] | None = None,
    params: SamplingParams | None = None,
    learn_params: SamplingParams | None = None,
    prompts: EmbodiedPrompts | None = None,
    checkpointer: Checkpointer = None,
    name: str = "embodied",
) -> CompiledStateGraph[EmbodiedState, AgentContext, Any, Any]:
    """A compiled LangGraph graph of the embodied agent (see the module docstring).

    Args:
        policy: any ``ponder.models.Policy``.
        memory: any ``ponder.memory.Memory`` (a ``MemoryStore``), or None for no memory across episodes
            (reflections still carry across the trials of one episode).
        max_steps: actions per trial at most (the env may end a trial sooner).
        max_trials: trials per episode, the first included.
        reflect: write a reflection after a failed trial (Reflexion); False retries blind.
        plan: plan-and-execute (a plan first, revised when an observation contradicts it).
        max_revisions: plan revisions per trial at most.
        memory_modes: with ``memory``: ``reflective`` (store reflections; recall those on the
            same and similar tasks), ``concept`` (causal abstractions, see ``concept``),
            ``experiential`` (the actions of a similar solved episode as a note).
        memory_k: insights / reflections recalled (a CLIN memory of the task is shown whole).
        concept: how the ``concept`` mode learns: ``"clin"`` (rewrite after each trial),
            ``"clin-voted"`` (votes on shown lessons) or ``"expel-frozen"`` (recall an extracted
            ExpeL set only); None: ``DEFAULT_CONCEPT``.
        clin_k: ``"clin"``: the memories of earlier trials each rewrite reads.
        insight_set: ``"expel-frozen"``: the set's name (``ponder memory extract-insights --name``).
        embedder: for grounding by similarity (default: the memory's embedder, or word overlap).
        params, learn_params: sampling for actions / for plans, reflections and lessons.
        prompts: ``EmbodiedPrompts``.
        checkpointer: a LangGraph checkpointer (``SqliteSaver``), for resuming.
        name: the graph's name (and the agent's, in provenance).

    Invoke with ``{"task_id": ...}``, ``context=AgentContext(env=...)`` and a config whose
    ``recursion_limit`` is at least ``recursion_limit(max_trials, max_steps, max_revisions)``
    (the compiled graph carries it as its default config).
    """
    ensure_policy(policy)
    if max_trials < 1 or max_steps < 1 or max_revisions < 0:
        raise ConfigError(
            f"max_trials and max_steps must be >= 1 and max_revisions >= 0, got {max_trials}, {max_steps}, {max_revisions}"
        )
    prompts = prompts or EmbodiedPrompts()
    params = params or SamplingParams(max_tokens=64, temperature=0.7)
    learn_params = learn_params or SamplingParams(max_tokens=128, temperature=0.7)
    modes = parse_memory_modes(memory_modes) if memory is not None else ()
    concept = concept or DEFAULT_CONCEPT
    if concept not in ("clin", "clin-voted", "expel-frozen") or clin_k < 0:
        raise ConfigError(
            f"concept must be clin, clin-voted or expel-frozen and clin_k >= 0, got {concept!r}, {clin_k}"
        )
    learns_concepts = "concept" in modes and concept != "expel-frozen"
    if memory is not None and "concept" in modes and concept == "expel-frozen":
        from ponder.agents.expel import frozen_insights

        if not frozen_insights(memory, insight_set):
            log.warning(
                "no ExpeL insights named %r in this memory: run `ponder memory extract-insights`", insight_set
            )
    grounder = Grounder(embedder if embedder is not None else getattr(memory, "embedder", None))

    def gen(prompt: Prompt, p: SamplingParams, seed: int) -> Completion:
        return policy.generate([prompt], dataclasses.replace(p, n=1, seed=seed))[0][0]

    def start_trial(state: EmbodiedState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        env = runtime.context.env
        if env.single_step:
            raise ConfigError(
                f"env {env.name!r} grades one answer per episode; use the reflexion agent for it"
            )
        obs, info = env.reset(seed=runtime.context.seed, options={"task_id": state["task_id"]})
        out: dict[str, Any] = {
            "observation": obs,
            "task_text": env.task_text(obs),
            "steps": [],
            "last_observation": obs,
            "admissible": list(info.get("admissible_actions", [])),
            "score": float(info.get("score", 0.0)),
            "trial_over": False,
            "success": False,
            "plan": [],
            "revisions": 0,
        }
        if memory is not None and "concept" in modes:  # every trial: lessons of earlier trials count too
            out |= _lessons(memory, env.task_text(obs), state["task_id"], memory_k, concept, insight_set)
        if memory is not None and not state.get("trials"):
            out |= _recall(memory, modes, env.task_text(obs), state["task_id"], runtime.context, memory_k)
        return out

    def make_plan(state: EmbodiedState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        prompt = prompts.plan(
            state["task_text"],
            state["last_observation"],
            insights=state.get("insights", []),
            reflections=state.get("reflections", []),
            notes=state.get("memory_notes", []),
        )
        c = gen(prompt, learn_params, _seed(runtime, state, "plan"))
        return {"plan": parse_plan(c.text), **_tokens(c)}

    def act(state: EmbodiedState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        env = runtime.context.env
        steps = list(state.get("steps", []))
        if not env.in_episode or env.task_id != state["task_id"]:
            _replay(env, state["task_id"], runtime.context.seed, steps)
        admissible = state.get("admissible", [])
        situation = f"{state['task_text']}\n{state['last_observation']}"
        shown = grounder.rank(situation, admissible, prompts.max_actions)
        prompt = prompts.act(
            state["task_text"],
            state["last_observation"],
            shown,
            history=steps,
            plan=state.get("plan", []),
            insights=state.get("insights", []),
            reflections=state.get("reflections", []),
            notes=state.get("memory_notes", []),
            more_actions=len(admissible) - len(shown),
        )
        c = gen(prompt, params, _seed(runtime, state, f"act{len(steps)}"))
        # the reply continues the assistant prefix ("Think:"), unless it restates the labels itself
        labelled = re.match(r"\s*(?:think|thought|action)\s*:", c.text, re.IGNORECASE)
        thought, raw = parse_react(c.text if labelled else prompt.assistant_prefix + c.text)
        g = grounder(raw, admissible, getattr(env, "guarded_verbs", ()))
        sent = g.action or "look"  # an empty reply still spends the turn, as a harmless look
        obs, reward, terminated, truncated, info = env.step(sent)
        score = float(info.get("score", state.get("score", 0.0)))
        step = {
            "step": len(steps),
            "thought": thought,
            "raw_action": raw,
            "action": sent,
            "grounding": g.to_dict(),
            "observation": obs,
            "reward": float(reward),
            "score": score,
            "success": bool(info.get("success")),
        }
        over = bool(terminated or truncated or info.get("success")) or len(steps) + 1 >= max_steps
        return {
            "steps": [*steps, step],
            "last_observation": obs,
            "admissible": list(info.get("admissible_actions", [])),
            "score": score,
            "success": bool(info.get("success")),
            "trial_over": over,
            **_tokens(c),
        }

    def revise(state: EmbodiedState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        prompt = prompts.revise(state["task_text"], state.get("plan", []), state.get("steps", []))
        c = gen(prompt, learn_params, _seed(runtime, state, f"revise{state.get('revisions', 0)}"))
        new = parse_plan(c.text) or state.get("plan", [])
        return {"plan": new, "revisions": state.get("revisions", 0) + 1, **_tokens(c)}

    def end_trial(state: EmbodiedState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        steps = state.get("steps", [])
        trial = len(state.get("trials", []))
        record = {
            "trial": trial,
            "action": "\n".join(s["action"] for s in steps),
            "success": bool(state.get("success")),
            "score": float(state.get("score", 0.0)),
            "feedback": runtime.context.env.outcome_feedback(
                bool(state.get("success")), float(state.get("score", 0.0))
            ),
            "steps": steps,
            "steps_taken": len(steps),
            "plan": state.get("plan", []),
            "revisions": state.get("revisions", 0),
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }
        out: dict[str, Any] = {"trials": [record]}
        if memory is None or not learns_concepts:
            return out
        if concept == "clin":
            return out | _rewrite_causal(
                memory, policy, state, record, runtime.context, learn_params, name, clin_k
            )
        return out | _learn_causal(
            memory, policy, prompts, state, record, runtime.context, learn_params, name
        )

    def remember(state: EmbodiedState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        return remember_insights(memory, state, runtime.context) if memory is not None else {}

    def reflect_node(state: EmbodiedState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        last = state["trials"][-1]
        # what the reflection hears of the outcome follows the env's feedback level
        outcome = runtime.context.env.outcome_feedback(bool(last["success"]), float(last["score"]))
        prompt = prompts.reflect(state["task_text"], last["steps"], outcome)
        c = gen(prompt, learn_params, _seed(runtime, state, "reflect"))
        text = parse_reflection(c.text)
        if memory is not None and "reflective" in modes:
            remember_reflection(memory, text, last, runtime.context, state["task_id"], name, policy)
        return {"reflections": [text], **_tokens(c)}

    def after_act(state: EmbodiedState) -> Literal["act", "revise", "end_trial"]:
        if state.get("trial_over"):
            return "end_trial"
        if plan and state.get("revisions", 0) < max_revisions and contradicts(state["steps"][-1]):
            return "revise"
        return "act"

    def after_trial(state: EmbodiedState) -> Literal["end", "reflect", "start_trial"]:
        if state.get("success"):
            return "end"
        if len(state.get("trials", [])) >= max_trials:
            # a final failure is reflected on only to be stored: later episodes can learn from it
            return "reflect" if reflect and "reflective" in modes else "end"
        return "reflect" if reflect else "start_trial"

    def after_reflect(state: EmbodiedState) -> Literal["end", "start_trial"]:
        return "end" if len(state.get("trials", [])) >= max_trials else "start_trial"

    g = StateGraph(EmbodiedState, context_schema=AgentContext)
    g.add_node("start_trial", start_trial)
    g.add_node("act", act)
    g.add_node("end_trial", end_trial)
    g.add_edge(START, "start_trial")
    if plan:
        g.add_node("plan", make_plan)
        g.add_node("revise", revise)
        g.add_edge("start_trial", "plan")
        g.add_edge("plan", "act")
        g.add_edge("revise", "act")
    else:
        g.add_edge("start_trial", "act")
    after_act_targets: dict[Hashable, str] = {"act": "act", "end_trial": "end_trial"}
    if plan:
        after_act_targets["revise"] = "revise"
    g.add_conditional_edges("act", after_act, after_act_targets)
    targets: dict[Hashable, str] = {"end": END, "start_trial": "start_trial"}
    if reflect:
        g.add_node("reflect", reflect_node)
        g.add_conditional_edges("reflect", after_reflect, {"end": END, "start_trial": "start_trial"})
        targets["reflect"] = "reflect"
    if learns_concepts:
        # memory is written in a node of its own, after the model's lessons are checkpointed
        g.add_node("remember", remember)
        g.add_edge("end_trial", "remember")
        g.add_conditional_edges("remember", after_trial, targets)
    else:
        g.add_conditional_edges("end_trial", after_trial, targets)
    graph = g.compile(checkpointer=checkpointer, name=name)
    return graph.with_config(
        recursion_limit=recursion_limit(max_trials, max_steps, max_revisions if plan else 0)
    )


# --------------------------------------------------------------------------------------- helpers
def _replay(env: TextEnv, task_id: str, seed: int, steps: Sequence[dict[str, Any]]) -> None:
    """Rebuild the env's state after a resume (a new env object): reset, then redo the trial's actions.

    The envs are deterministic given the seed, so the same actions lead to the same state.
    """
    log.info("resuming %s: replaying %d actions in a fresh env", task_id, len(steps))
    env.reset(seed=seed, options={"task_id": task_id})
    for s in steps:
        env.step(s["action"])


def _tokens(c: Completion) -> dict[str, int]:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens}


def _seed(runtime: Runtime[AgentContext], state: EmbodiedState, what: str) -> int:
    trial = len(state.get("trials", []))
    return trial_seed(runtime.context.seed, f"{state['task_id']}/{what}", trial)


def _recall(
    memory: Memory, modes: tuple[str, ...], task_text: str, task_id: str, ctx: AgentContext, k: int
) -> dict[str, Any]:
    """Reflections and solved-episode notes from earlier episodes (at an episode's start)."""
    out: dict[str, Any] = {"memory_notes": []}
    floor = float(getattr(memory.embedder, "related_similarity", 0.0))
    mine = (ctx.run_id, ctx.episode_id)

    def others(hits: list[Hit]) -> list[Hit]:
        return [h for h in hits if (h.record.provenance.run_id, h.record.provenance.episode_id) != mine]

    if "reflective" in modes:
        same = memory.list(kind="reflection", where={"task_id": task_id}, limit=k + 8)
        texts = [
            r.text
            for r in same
            if isinstance(r, Reflection) and (r.provenance.run_id, r.provenance.episode_id) != mine
        ]
        out["memory_notes"] += [
            f"Lesson from an earlier run of this task: {t}" for t in dict.fromkeys(texts)
        ][:k]
    if "experiential" in modes:
        hits = others(memory.search(task_text, kind="experience", k=3, where={"outcome": "success"}))
        # only an env-verified success (``is_trusted``): an imported record may just claim one
        for h in [h for h in hits if h.similarity >= floor and is_trusted(h.record)][:1]:
            if not isinstance(h.record, Experience):  # the search asked for experiences only
                continue
            good = next((t for t in h.record.trajectory if t.get("success")), None)
            if good and good.get("action"):
                acts = " ; ".join(good["action"].splitlines()[:20])
                out["memory_notes"].append(f"A similar task was solved with these actions: {acts}")
    return out


def _lessons(
    memory: Memory,
    task_text: str,
    task_id: str,
    k: int,
    concept: str = "clin-voted",
    insight_set: str = "expel",
) -> dict[str, Any]:
    """The lessons a trial sees (``concept``):

    - ``clin``: the task's memory, whole (its latest rewrite); with none yet, the ``k`` causal
      lessons nearest to the task from other tasks (CLIN's meta-memory is not built);
    - ``clin-voted``: active lessons written on this task (earlier trials and episodes) first,
      then those nearest to the task's text from other tasks; ``k`` at most;
    - ``expel-frozen``: every rule of the extracted set, most agreed first.
    """
    if concept == "expel-frozen":
        from ponder.agents.expel import frozen_insights

        chosen = frozen_insights(memory, insight_set)
    else:
        active = {"status": "active", "form": "causal"}
        if concept == "clin":
            from ponder.memory.clin import current_lessons

            same = current_lessons(memory, task_id)
        else:
            found = memory.list(kind="insight", where={**active, "task_id": task_id}, limit=k)
            same = [i for i in found if isinstance(i, Insight)]
            same.sort(key=lambda i: (-i.net, i.id))
        near = (
            [] if concept == "clin" and same else memory.search(task_text, kind="insight", k=k, where=active)
        )
        cap = max(k, len(same)) if concept == "clin" else k
        nearest = [h.record for h in near if isinstance(h.record, Insight)]
        chosen = list({i.id: i for i in [*same, *nearest]}.values())[:cap]
    return {"insights": [i.text for i in chosen], "shown_insights": [i.id for i in chosen]}


def _learn_causal(
    memory: Memory,
    policy: Policy,
    prompts: EmbodiedPrompts,
    state: EmbodiedState,
    trial: dict[str, Any],
    ctx: AgentContext,
    params: SamplingParams,
    agent: str,
) -> dict[str, Any]:
    """CLIN-style (voted): causal lessons from one trial's last 15 steps, as an update of the insight
    book (ADD, and votes on the shown lessons) that the ``remember`` node applies."""
    from ponder.memory.insights import causal_prompt, parse_operations, pending_update

    ids = state.get("shown_insights", [])
    shown = (
        [i for i in memory.get_many(ids) if isinstance(i, Insight) and i.status == "active"] if ids else []
    )
    outcome = "success" if trial["success"] else f"failure (score {trial['score']:.0f}/100)"
    text = f"Task: {state['task_text']}\n{format_steps(trial['steps'][-15:])}"
    prompt = causal_prompt(text, outcome, shown, max_chars=1500)
    seed = trial_seed(ctx.seed + 3, state["task_id"], trial["trial"])
    c = policy.generate([prompt], dataclasses.replace(params, n=1, seed=seed))[0][0]
    ops = parse_operations(c.text, n_shown=len(shown), form="causal")
    pending = pending_update(
        ops,
        shown,
        update_id=f"{ctx.run_id}/{ctx.episode_id}/t{trial['trial']}/lessons",
        provenance=agent_provenance(ctx, state["task_id"], agent, policy),
        episode_ids=[ctx.episode_id],
        form="causal",
    )
    return {"insight_ops": [str(o) for o in ops], "pending_insights": pending, **_tokens(c)}


def _rewrite_causal(
    memory: Memory,
    policy: Policy,
    state: EmbodiedState,
    trial: dict[str, Any],
    ctx: AgentContext,
    params: SamplingParams,
    agent: str,
    k: int,
) -> dict[str, Any]:
    """CLIN: the task's memory rewritten from this trial's trace and score and the last ``k``
    memories of the task, as a pending rewrite that the ``remember`` node applies."""
    from ponder.memory.clin import generations, parse_lessons, pending_rewrite, rewrite_prompt

    update_id = f"{ctx.run_id}/{ctx.episode_id}/t{trial['trial']}/clin"
    previous = generations(memory, state["task_id"], k, before=update_id)
    prompt = rewrite_prompt(state["task_text"], format_steps(trial["steps"]), trial["score"], previous)
    seed = trial_seed(ctx.seed + 3, state["task_id"], trial["trial"])
    c = policy.generate([prompt], dataclasses.replace(params, n=1, seed=seed))[0][0]
    lessons = parse_lessons(c.text)
    pending = pending_rewrite(
        lessons,
        memory,
        state["task_id"],
        update_id=update_id,
        provenance=agent_provenance(ctx, state["task_id"], agent, policy),
        score=trial["score"],
        success=trial["success"],
        trial=trial["trial"],
    )
    ops = [f"REWRITE {i}: {t}" for i, t in enumerate(lessons, 1)]
    return {"insight_ops": ops, "pending_insights": pending, **_tokens(c)}
