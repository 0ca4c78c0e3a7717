"""PRM-guided search as an agent, and as the actor inside Reflexion.

``build_search_agent`` answers each task by a search (``ponder.search.ALGORITHMS``: beam,
DVTS, best-of-N, MCTS, LATS, ...) instead of one sample; the environment grades the answer
the search chose. With ``max_trials > 1`` a failed search is searched again with a new seed.

``SearchActor`` is the piece both this agent and Reflexion (``--actor-search``) use: it runs
one search on a prompt, saves the tree the search explored next to the run (JSON, and a PNG
for the first episodes), and returns the chosen solution with what it cost.

The PRM is an object (``make_prm`` builds one from a name or folder). A PRM that needs the task
(``ponder.models.prm.PerTaskPRM``: the verifier, ``make_prm("verifier")``) is bound to each task
(``prm.bind(env.verifier(task_id))``) before its search.

Each search's summary (``episode["searches"]``) says whether it was an ORACLE search:
``"oracle": True`` when the gold answer took part in a decision inside the search (the
verifier PRM, LATS' env reward, MCTS with ``use_env_reward``), with the reasons in
``"oracle_sources"``. The environment's grading of the answer the search returned is the
episode's outcome, not part of the search, and does not count.

::

    observe -> search -> evaluate --success or last trial--> END
                  ^          |
                  +----------+

Example:
    >>> from ponder.agents import AgentContext
    >>> from ponder.environments import make
    >>> from ponder.models import FunctionPRM, ScriptedPolicy
    >>> env = make("math", level=1, num_tasks=1, seed=0)          # What is 9 + 4?
    >>> policy = ScriptedPolicy(["9 + 4 = 13.\\n\\nAnswer: 13", "9 + 4 = 12.\\n\\nAnswer: 12"], cycle=True)
    >>> prm = FunctionPRM(lambda q, steps: 0.9 if "13" in steps[-1] else 0.1)
    >>> graph = build_search_agent(policy, prm, algorithm="best_of_n", n=4)
    >>> out = graph.invoke({"task_id": "math/L1/0"}, context=AgentContext(env=env))
    >>> out["success"], out["searches"][0]["answer"]
    (True, '13')
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Checkpointer

from ponder.agents.state import AgentContext, EpisodeState
from ponder.errors import ConfigError, UnknownName
from ponder.models.check import ensure_policy
from ponder.models.prm import PRM, Evaluate, PerTaskPRM
from ponder.models.types import Policy, Prompt, SamplingParams

if TYPE_CHECKING:
    from ponder.environments.base import TextEnv
    from ponder.memory import Memory

__all__ = ["SearchActor", "build_search_agent", "check_search_settings"]

log = logging.getLogger(__name__)


@dataclass
class SearchActor:
    """Runs one search per attempt and keeps its tree.

    Attributes:
        policy: generates the steps.
        prm: a PRM; a ``PerTaskPRM`` is bound to each task first (``make_prm("verifier")``: the
            env's verifier as outcome reward, an ORACLE, it reads the gold answer; for upper
            bounds, not for honest results); or None (algorithms that need no PRM: ``majority``,
            ``lats`` with its LM value).
        algorithm: a name in ``ponder.search.ALGORITHMS``.
        n: the algorithm's width (samples, beams x width, ...).
        options: extra keyword options of the algorithm (``beam_width``, ``iterations``, ...).
        budget: generated tokens per search at most (None: the algorithm's own bound); a search
            passes it by less than one sample's ``max_tokens``, and an LLM judge's tokens count.
        step_params: sampling per step (``max_tokens`` is per step).
        max_steps: steps per solution at most.
        separator: between steps.
        draw_trees: the env's first tasks whose first search tree is also drawn to PNG (chosen by
            task, not by which episode ends first, so a resumed run draws the same ones).
    """

    policy: Policy
    prm: PRM | None = None
    algorithm: str = "beam"
    n: int = 8
    options: Mapping[str, Any] = field(default_factory=dict)
    budget: int | None = None
    step_params: SamplingParams = field(
        default_factory=lambda: SamplingParams(max_tokens=48, temperature=0.8)
    )
    max_steps: int = 8
    separator: str = "\n\n"
    draw_trees: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.prm, str):  # not a PRM: tell the caller how to build one
            raise ConfigError(f"prm must be a PRM object or None, got {self.prm!r}; build it with make_prm")
        check_search_settings(self.algorithm, has_prm=self.prm is not None, n=self.n, budget=self.budget)

    def search(
        self,
        env: TextEnv,
        task_id: str,
        prompt: Prompt,
        question: str,
        *,
        seed: int,
        ctx: AgentContext,
        trial: int,
    ) -> tuple[str, dict[str, Any]]:
        """Search on ``prompt``; returns the chosen solution text and a summary for the episode log."""
        from ponder.search import ALGORITHMS
        from ponder.search.base import SearchProblem
        from ponder.search.budget import Budget

        evaluate, reads = env.verifier(task_id, ctx.seed), getattr(env, "verifier_reads_answer", True)
        problem = SearchProblem(
            prompt,
            self.policy,
            self._prm_for(evaluate, reads),
            question=question,
            params=self.step_params,
            separator=self.separator,
            max_steps=self.max_steps,
            answer_of=env.answer_key,
            budget=Budget(max_generated_tokens=self.budget),
            seed=seed,
            evaluate=evaluate,
            evaluate_reads_answer=reads,
        )
        result = ALGORITHMS[self.algorithm](problem, n=self.n, **dict(self.options))
        summary = {
            "trial": trial,
            "algorithm": self.algorithm,
            "n": self.n,
            "answer": result.answer,
            "score": result.score,
            "budget": result.budget,
            "candidates": len(result.candidates),
            "nodes": len(result.tree),
            "oracle": result.oracle,
            "oracle_sources": result.oracle_sources,
        }
        if ctx.artifacts is not None:
            # paths relative to the artifacts dir (the run dir), so a moved run still finds them
            root, stem = Path(ctx.artifacts), f"{_safe(ctx.episode_id or task_id)}-t{trial}"
            result.tree.save(root / "trees" / f"{stem}.json")
            summary["tree"] = f"trees/{stem}.json"
            if trial == 0 and task_id in env.task_ids()[: self.draw_trees]:
                try:
                    result.tree.draw(root / "trees" / f"{stem}.png")
                    summary["tree_png"] = f"trees/{stem}.png"
                except Exception as e:  # a drawing problem must not lose the episode
                    log.warning("could not draw the search tree of %s: %s", stem, e)
        return result.text, summary

    def attempt(
        self,
        env: TextEnv,
        task_id: str,
        prompt: Prompt,
        question: str,
        *,
        seed: int,
        ctx: AgentContext,
        trial: int,
    ) -> dict[str, Any]:
        """``search(...)`` as a graph state update: the attempt, its tokens, the search summary."""
        text, summary = self.search(env, task_id, prompt, question, seed=seed, ctx=ctx, trial=trial)
        tokens = (summary["budget"]["prompt_tokens"], summary["budget"]["generated_tokens"])
        return {
            "attempt": text,
            "attempt_tokens": tokens,
            "prompt_tokens": tokens[0],
            "completion_tokens": tokens[1],
            "searches": [summary],
        }

    def _prm_for(self, evaluate: Evaluate, reads_answer: bool = True) -> PRM | None:
        """The PRM of one task: a ``PerTaskPRM`` bound to its ``evaluate``, any other PRM as it is."""
        if isinstance(self.prm, PerTaskPRM):
            return self.prm.bind(evaluate, oracle=reads_answer)
        return self.prm


def check_search_settings(algorithm: str, *, has_prm: bool, n: int, budget: int | None) -> None:
    """Refuse search settings that cannot work (the runner calls it before anything is written)."""
    from ponder.search import ALGORITHMS, NO_PRM

    if algorithm not in ALGORITHMS:
        raise UnknownName.for_registry("search algorithm", algorithm, ALGORITHMS)
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    if not has_prm and algorithm not in NO_PRM:
        raise ConfigError(
            f"search algorithm {algorithm!r} needs a PRM; pass --prm PATH (from 'ponder prm "
            "train'), --prm judge, or --prm verifier (an oracle: it reads the gold answer), or use "
            "--algorithm majority or lats"
        )
    if budget is not None and budget < 1:
        raise ConfigError(f"the search budget must be >= 1 generated tokens, got {budget}")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def build_search_agent(
    policy: Policy,
    prm: PRM | str | None = None,
    *,
    algorithm: str = "beam",
    n: int = 8,
    budget: int | None = None,
    options: Mapping[str, Any] | None = None,
    max_trials: int = 1,
    params: SamplingParams | None = None,
    max_steps: int = 8,
    separator: str = "\n\n",
    memory: Memory | None = None,
    checkpointer: Checkpointer = None,
) -> CompiledStateGraph[EpisodeState, AgentContext, Any, Any]:
    """A compiled graph that answers each task with a PRM-guided search.

    Args:
        policy: any ``ponder.models.Policy``.
        prm: a PRM (``ponder.models.HFPRM(path)``, ``ValueHeadPRM``, ``LLMJudgePRM``,
            ``VerifierPRM.per_task()``: an oracle, reads the gold answer), a name or folder
            ``make_prm`` builds one from (``"verifier"``, ``"judge"``), or None for PRM-free
            algorithms.
        algorithm: a name in ``ponder.search.ALGORITHMS``.
        n: the search width.
        budget: generated tokens per search at most.
        options: the algorithm's own options, e.g. ``{"beam_width": 4}``.
        max_trials: searches per task; a failed one is searched again with a new seed.
        params: sampling per step (``max_tokens`` per step).
        max_steps: steps per solution at most.
        separator: between steps.
        memory: accepted for a uniform agent signature; not used.
        checkpointer: a LangGraph checkpointer (``SqliteSaver``), for resuming.

    Invoke with ``{"task_id": ...}`` and ``context=AgentContext(env=...)``; set
    ``AgentContext.artifacts`` to a directory to keep every search tree (``trees/*.json``).
    """
    ensure_policy(policy)
    from ponder.agents.reflexion import evaluate_attempt, route_after_evaluate, trial_seed
    from ponder.search.prompts import step_prompt

    if max_trials < 1:
        raise ConfigError(f"max_trials must be >= 1, got {max_trials}")
    if isinstance(prm, str):
        from ponder.models.factory import make_prm

        prm = make_prm(prm, policy=policy)
    actor = SearchActor(
        policy,
        prm,
        algorithm=algorithm,
        n=n,
        options=dict(options or {}),
        budget=budget,
        step_params=params or SamplingParams(max_tokens=48, temperature=0.8),
        max_steps=max_steps,
        separator=separator,
    )

    def observe(state: EpisodeState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        env = runtime.context.env
        if not env.single_step:
            raise ConfigError(f"search grades one answer per trial, but env {env.name!r} is multi-step")
        obs, _ = env.reset(seed=runtime.context.seed, options={"task_id": state["task_id"]})
        return {"observation": obs, "task_text": env.task_text(obs), "success": False}

    def search(state: EpisodeState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        ctx, task_id = runtime.context, state["task_id"]
        trial = len(state.get("trials", []))
        prompt = step_prompt(ctx.env, task_id, state["observation"], separator)
        return actor.attempt(
            ctx.env,
            task_id,
            prompt,
            state.get("task_text") or state["observation"],
            seed=trial_seed(ctx.seed, task_id, trial),
            ctx=ctx,
            trial=trial,
        )

    def route(state: EpisodeState) -> Literal["end", "search"]:
        return (
            "end" if route_after_evaluate(state, max_trials=max_trials, reflect=False) == "end" else "search"
        )

    g = StateGraph(EpisodeState, context_schema=AgentContext)
    g.add_node("observe", observe)
    g.add_node("search", search)
    g.add_node("evaluate", evaluate_attempt)
    g.add_edge(START, "observe")
    g.add_edge("observe", "search")
    g.add_edge("search", "evaluate")
    g.add_conditional_edges("evaluate", route, {"end": END, "search": "search"})
    return g.compile(checkpointer=checkpointer, name="search")


def actor_prompt_for_search(prompt: Prompt, env: TextEnv, task_id: str, separator: str) -> Prompt:
    """Reflexion's actor prompt turned into a step-by-step one: the step system message, and the
    env's worked examples written as steps in place of the plain ones."""
    from ponder.search.prompts import STEP_SYSTEM

    plain = {q: a for q, a in env.examples_for(task_id)}
    steps = dict(env.step_examples(task_id, separator))
    msgs = list(prompt.messages)
    if msgs and msgs[0].role == "system":
        msgs[0] = dataclasses.replace(msgs[0], content=STEP_SYSTEM)
    for i in range(1, len(msgs)):
        prev = msgs[i - 1]
        if msgs[i].role == "assistant" and prev.role == "user" and plain.get(prev.content) == msgs[i].content:
            msgs[i] = dataclasses.replace(msgs[i], content=steps.get(prev.content, msgs[i].content))
    return dataclasses.replace(prompt, messages=tuple(msgs))
