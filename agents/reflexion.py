"""Reflexion and its two baselines as LangGraph graphs.

Reflexion (Shinn et al. 2023): the actor attempts the task, the environment grades the
attempt, and on failure the model writes a short self-reflection; the next attempt sees the
previous attempt, its feedback and the reflections. The baselines isolate the method, as the
paper's ablation does:

- ``build_retry_feedback`` (``retry-feedback``): the same loop, the previous attempt and its
  feedback shown, no reflection; what reflection adds is Reflexion minus this;
- ``build_retry`` (``retry``): no feedback at all, resampling only.

All three stop on the env's success signal (for HumanEval: the visible tests, never the
hidden ones) and spend the same trials.

::

    observe -> act -> evaluate --success or last trial--> END
                ^         |
                |         +--(reflexion)--> reflect --+
                +---------+--(retry, retry-feedback)--+

Example:
    >>> from ponder.agents import AgentContext, build_reflexion
    >>> from ponder.environments import make
    >>> from ponder.models import ScriptedPolicy
    >>> env = make("math", level=1, num_tasks=1, seed=0)          # What is 9 + 4?
    >>> policy = ScriptedPolicy({"Diagnose": "I added wrong.", "": "Answer: 12"})
    >>> graph = build_reflexion(policy, max_trials=2)
    >>> out = graph.invoke({"task_id": "math/L1/0"}, context=AgentContext(env=env))
    >>> [t["success"] for t in out["trials"]], out["reflections"]
    ([False, False], ['I added wrong.'])
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Checkpointer

from ponder.agents.memory_nodes import MemoryModes, parse_memory_modes
from ponder.agents.prompts import ReflexionPrompts, parse_reflection
from ponder.agents.state import AgentContext, EpisodeState, grade, start_single_step
from ponder.environments.base import AgentTestsEnv
from ponder.errors import ConfigError
from ponder.models.check import ensure_policy
from ponder.models.types import Policy, Prompt, SamplingParams

if TYPE_CHECKING:
    from ponder.agents.search_agent import SearchActor
    from ponder.memory import Memory

__all__ = [
    "build_reflexion",
    "build_retry",
    "build_retry_feedback",
    "evaluate_attempt",
    "route_after_evaluate",
    "trial_seed",
]

log = logging.getLogger(__name__)


def trial_seed(seed: int, task_id: str, trial: int) -> int:
    """A sampling seed that depends only on (seed, task, trial): equal across agents."""
    digest = hashlib.blake2b(f"{seed}/{task_id}/{trial}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def route_after_evaluate(
    state: EpisodeState, *, max_trials: int, reflect: bool
) -> Literal["end", "reflect", "act"]:
    """End on success or when the trials are spent; else reflect (Reflexion) or act again (retry)."""
    if state.get("success") or len(state.get("trials", [])) >= max_trials:
        return "end"
    return "reflect" if reflect else "act"


def evaluate_attempt(state: EpisodeState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Grade ``state["attempt"]`` in the env and append the trial (a graph node)."""
    env = runtime.context.env
    # a resumed episode has a new env: give it the tests again
    if (tests := state.get("agent_tests")) and isinstance(env, AgentTestsEnv):
        env.set_agent_tests(state["task_id"], tests)
    p_tok, c_tok = state.get("attempt_tokens", (0, 0))
    trial = len(state.get("trials", []))
    record: Any = grade(
        runtime.context,
        state["task_id"],
        state.get("attempt", ""),
        trial,
        prompt_tokens=p_tok,
        completion_tokens=c_tok,
    )
    return {"trials": [record], "success": record["success"]}


def _build(
    policy: Policy,
    *,
    reflect: bool,
    show_feedback: bool,
    memory: Memory | None = None,
    max_trials: int = 3,
    prompts: ReflexionPrompts | None = None,
    params: SamplingParams | None = None,
    reflect_params: SamplingParams | None = None,
    memory_modes: str | Sequence[str] = (),
    memory_k: int = 3,
    actor_search: SearchActor | None = None,
    agent_tests: int = 0,
    insights: Literal["online", "frozen"] = "online",
    insight_set: str = "expel",
    checkpointer: Checkpointer = None,
    name: str,
) -> CompiledStateGraph[EpisodeState, AgentContext, Any, Any]:
    if max_trials < 1:
        raise ConfigError(f"max_trials must be >= 1, got {max_trials}")
    if agent_tests < 0:
        raise ConfigError(f"agent_tests must be >= 0, got {agent_tests}")
    prompts = prompts or ReflexionPrompts()
    params = params or SamplingParams(max_tokens=128, temperature=0.7)
    reflect_params = reflect_params or SamplingParams(max_tokens=64, temperature=params.temperature)
    mem = None
    if memory is not None:
        mem = MemoryModes(
            memory,
            parse_memory_modes(memory_modes),
            policy,
            prompts,
            agent=name,
            k_reflections=memory_k,
            learn_params=reflect_params,
            insights=insights,
            insight_set=insight_set,
        )

    def observe(state: EpisodeState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        task_id = state["task_id"]
        start = start_single_step(runtime.context, task_id, name)
        recalled = mem.recall(task_id, start["task_text"], runtime.context) if mem is not None else {}
        out = {**start, "success": False, **recalled}
        env = runtime.context.env
        if agent_tests and isinstance(env, AgentTestsEnv):  # Reflexion writes its own unit tests
            seed = trial_seed(runtime.context.seed + 3, task_id, 0)
            prompt = prompts.write_tests(start["observation"], agent_tests)
            c = policy.generate(
                [prompt], dataclasses.replace(reflect_params, n=1, seed=seed, max_tokens=256)
            )[0][0]
            written = env.set_agent_tests(task_id, c.text)
            out |= {
                "agent_tests": "\n".join(f"assert {t.call} == {t.expected}" for t in written),
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
            }
        return out

    def act(state: EpisodeState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        trials = state.get("trials", [])
        trial, last = len(trials), (trials[-1] if trials and show_feedback else None)
        prompt = prompts.actor(
            state["observation"],
            state.get("reflections", []),
            state.get("memory_notes", []),
            exemplars=[*state.get("examples", []), *state.get("exemplars", [])],
            insights=state.get("insights", []),
            last_attempt=None if last is None else last["action"],
            last_feedback=None if last is None else last["feedback"],
        )
        seed = trial_seed(runtime.context.seed, state["task_id"], trial)
        if actor_search is not None:
            return _search_act(actor_search, prompt, state, runtime.context, seed, trial)
        c = policy.generate([prompt], dataclasses.replace(params, n=1, seed=seed))[0][0]
        return {
            "attempt": c.text,
            "attempt_tokens": (c.prompt_tokens, c.completion_tokens),
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
        }

    def reflect_node(state: EpisodeState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        last = state["trials"][-1]
        prompt = prompts.reflect(state["observation"], last["action"], last["feedback"])
        seed = trial_seed(runtime.context.seed + 1, state["task_id"], last["trial"])
        c = policy.generate([prompt], dataclasses.replace(reflect_params, n=1, seed=seed))[0][0]
        text = parse_reflection(c.text)
        if mem is not None:
            mem.remember_reflection(text, state, last, runtime.context)
        return {
            "reflections": [text],
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
        }

    def learn(state: EpisodeState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        seed = trial_seed(runtime.context.seed + 2, state["task_id"], len(state.get("trials", [])))
        return mem.learn(state, runtime.context, seed) if mem is not None else {}

    def remember(state: EpisodeState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        return mem.remember(state, runtime.context) if mem is not None else {}

    learns = mem is not None and bool({"reflective", "concept"} & set(mem.modes)) and reflect

    def route(state: EpisodeState) -> str:
        nxt = route_after_evaluate(state, max_trials=max_trials, reflect=reflect)
        return "learn" if nxt == "end" and learns else nxt

    g = StateGraph(EpisodeState, context_schema=AgentContext)
    g.add_node("observe", observe)
    g.add_node("act", act)
    g.add_node("evaluate", evaluate_attempt)
    g.add_edge(START, "observe")
    g.add_edge("observe", "act")
    g.add_edge("act", "evaluate")
    targets: dict[Hashable, str] = {"end": END, "act": "act"}
    if reflect:
        g.add_node("reflect", reflect_node)
        g.add_edge("reflect", "act")
        targets["reflect"] = "reflect"
    if learns:
        g.add_node("learn", learn)
        # memory is written in a node of its own, after the model's reply is checkpointed
        g.add_node("remember", remember)
        g.add_edge("learn", "remember")
        g.add_edge("remember", END)
        targets["learn"] = "learn"
    g.add_conditional_edges("evaluate", route, targets)
    return g.compile(checkpointer=checkpointer, name=name)


def _search_act(
    actor: SearchActor, prompt: Prompt, state: EpisodeState, ctx: AgentContext, seed: int, trial: int
) -> dict[str, Any]:
    """The actor as a search (``SearchActor``) on the Reflexion prompt, written step by step."""
    from ponder.agents.search_agent import actor_prompt_for_search

    prompt = actor_prompt_for_search(prompt, ctx.env, state["task_id"], actor.separator)
    question = state.get("task_text") or state["observation"]
    return actor.attempt(ctx.env, state["task_id"], prompt, question, seed=seed, ctx=ctx, trial=trial)


def build_reflexion(
    policy: Policy,
    *,
    memory: Memory | None = None,
    max_trials: int = 3,
    prompts: ReflexionPrompts | None = None,
    params: SamplingParams | None = None,
    reflect_params: SamplingParams | None = None,
    memory_modes: str | Sequence[str] = (),
    memory_k: int = 3,
    actor_search: SearchActor | None = None,
    agent_tests: int = 0,
    insights: Literal["online", "frozen"] = "online",
    insight_set: str = "expel",
    checkpointer: Checkpointer = None,
) -> CompiledStateGraph[EpisodeState, AgentContext, Any, Any]:
    """A compiled Reflexion graph: act, evaluate, reflect on failure, retry with the reflection.

    Args:
        policy: any ``ponder.models.Policy``.
        memory: any ``ponder.memory.Memory`` (a ``MemoryStore``); reflections are written to it,
            and reflections on the same task from earlier runs are recalled (as quoted data).
        max_trials: attempts per task, the first included.
        prompts: ``ReflexionPrompts``.
        params: sampling of each attempt.
        reflect_params: sampling of reflections, insight operations and agent-written tests.
        memory_modes: with ``memory``: ``experiential``, ``reflective``, ``concept``
            (``ponder.agents.memory_nodes``).
        memory_k: reflections recalled.
        actor_search: a ``ponder.agents.search_agent.SearchActor``: each attempt is a PRM-guided
            search on the reflection-augmented prompt.
        agent_tests: unit tests the model writes for itself first, in envs that run them
            (``AgentTestsEnv``: HumanEval); 0 writes none.
        insights: the ``concept`` mode: ``"online"`` (ExpeL-style extraction after each episode) or
            ``"frozen"`` (recall the ExpeL set ``insight_set``, see ``ponder.agents.expel``).
        insight_set: the extracted set's name (``insights="frozen"``).
        checkpointer: a LangGraph checkpointer (``SqliteSaver``), for resuming.

    Invoke with ``{"task_id": ...}`` and ``context=AgentContext(env=...)``.
    """
    ensure_policy(policy)
    return _build(
        policy,
        reflect=True,
        show_feedback=True,
        memory=memory,
        max_trials=max_trials,
        prompts=prompts,
        params=params,
        reflect_params=reflect_params,
        memory_modes=memory_modes,
        memory_k=memory_k,
        actor_search=actor_search,
        agent_tests=agent_tests,
        insights=insights,
        insight_set=insight_set,
        checkpointer=checkpointer,
        name="reflexion",
    )


def build_retry(
    policy: Policy,
    *,
    memory: Memory | None = None,
    max_trials: int = 3,
    prompts: ReflexionPrompts | None = None,
    params: SamplingParams | None = None,
    reflect_params: SamplingParams | None = None,
    memory_modes: str | Sequence[str] = (),
    memory_k: int = 3,
    actor_search: SearchActor | None = None,
    agent_tests: int = 0,
    insights: Literal["online", "frozen"] = "online",
    insight_set: str = "expel",
    checkpointer: Checkpointer = None,
) -> CompiledStateGraph[EpisodeState, AgentContext, Any, Any]:
    """The baseline with no feedback: the loop of ``build_reflexion`` resampling blind (no
    previous attempt, no feedback, no reflection). Stops on success like the others.

    The options are ``build_reflexion``'s; ``memory`` is accepted for a uniform signature and not
    used (so neither are ``memory_modes``, ``memory_k``, ``insights`` and ``insight_set``).
    """
    ensure_policy(policy)
    return _build(
        policy,
        reflect=False,
        show_feedback=False,
        memory=None,
        max_trials=max_trials,
        prompts=prompts,
        params=params,
        reflect_params=reflect_params,
        memory_modes=memory_modes,
        memory_k=memory_k,
        actor_search=actor_search,
        agent_tests=agent_tests,
        insights=insights,
        insight_set=insight_set,
        checkpointer=checkpointer,
        name="retry",
    )


def build_retry_feedback(
    policy: Policy,
    *,
    memory: Memory | None = None,
    max_trials: int = 3,
    prompts: ReflexionPrompts | None = None,
    params: SamplingParams | None = None,
    reflect_params: SamplingParams | None = None,
    memory_modes: str | Sequence[str] = (),
    memory_k: int = 3,
    actor_search: SearchActor | None = None,
    agent_tests: int = 0,
    insights: Literal["online", "frozen"] = "online",
    insight_set: str = "expel",
    checkpointer: Checkpointer = None,
) -> CompiledStateGraph[EpisodeState, AgentContext, Any, Any]:
    """Reflexion's ablation: each attempt sees the previous attempt and its feedback, and no
    reflection is written. Reflexion minus this is what self-reflection adds.

    The options are ``build_reflexion``'s; ``memory`` is accepted for a uniform signature and not
    used (so neither are ``memory_modes``, ``memory_k``, ``insights`` and ``insight_set``).
    """
    ensure_policy(policy)
    return _build(
        policy,
        reflect=False,
        show_feedback=True,
        memory=None,
        max_trials=max_trials,
        prompts=prompts,
        params=params,
        reflect_params=reflect_params,
        memory_modes=memory_modes,
        memory_k=memory_k,
        actor_search=actor_search,
        agent_tests=agent_tests,
        insights=insights,
        insight_set=insight_set,
        checkpointer=checkpointer,
        name="retry-feedback",
    )
