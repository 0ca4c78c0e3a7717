"""Self-Refine-style refinement as a LangGraph graph: answer, self-feedback, refine.

Self-Refine (Madaan et al. 2023): one model answers, gives feedback on its own answer, and
refines the answer conditioned on every earlier answer and feedback, until the feedback says the
answer is done (a stop indicator in the feedback: "It is correct" in the paper's math prompts) or
the rounds are spent. No external evaluator: the env's grade of each round's answer is kept in
the trial record for the logs and the success-by-trial plots, and never reaches a prompt or the
stopping rule (``route_after_grade`` reads the critique's verdict and the round count only).
The answer handed in is the last one: the runner logs its grade as the episode's ``success``.

::

    observe -> generate -> (feedback) -> grade --critique done or rounds spent--> END
                  refine -> (feedback) ->   |
                    ^-----------------------+

How it departs from the paper (hence "-style"): feedback and refinement are two calls, as in the
paper's algorithm (its GSM code asks for both in one completion); answers are worked text ending
with ``Answer: N``, not Python programs; the few-shot examples are built from the env's worked
examples (``ponder.agents.self_refine_prompts``); ``max_trials`` counts answers, the first one
included (the paper's GSM loop allows 4 feedback rounds), so the budget matches retry's; and the
last answer the budget allows gets no feedback, since no refinement would follow it.

Example:
    >>> from ponder.agents import AgentContext
    >>> from ponder.environments import make
    >>> from ponder.models import ScriptedPolicy
    >>> env = make("math", level=1, num_tasks=1, seed=0)          # What is 9 + 4?
    >>> policy = ScriptedPolicy({"Check it step by step": "9 + 4 = 13 looks good. It is correct.",
    ...                          "": "9 + 4 = 12.\\nAnswer: 12"})
    >>> out = build_self_refine(policy, max_trials=3).invoke(
    ...     {"task_id": "math/L1/0"}, context=AgentContext(env=env))
    >>> [(t["success"], t["stopped"]) for t in out["trials"]]     # wrong, yet the critique stops it
    [(False, True)]
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Annotated, Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Checkpointer
from typing_extensions import Required, TypedDict

from ponder.agents.reflexion import trial_seed
from ponder.agents.self_refine_prompts import SelfRefinePrompts, parse_critique
from ponder.agents.state import AgentContext, grade, start_single_step
from ponder.errors import ConfigError
from ponder.models.check import ensure_policy
from ponder.models.types import Policy, SamplingParams

__all__ = [
    "SelfRefineState",
    "build_self_refine",
    "grade_answer",
    "route_after_answer",
    "route_after_grade",
]

# seed offsets of the feedback step (the answers use the retry/reflexion seeds of their trial)
_FEEDBACK_SEED = 4


class SelfRefineState(TypedDict, total=False):
    """What the Self-Refine graph carries and checkpoints.

    Each trial record is Reflexion's (``TrialRecord``: the answer, the env's grade and feedback,
    for the logs only) plus ``critique`` (the model's feedback on that answer; None for the last
    answer the budget allows) and ``stopped`` (the critique said the answer is done, which ended
    the episode). ``success`` is the grade of the latest answer, the one handed in.
    """

    task_id: Required[str]
    observation: Required[str]
    task_text: Required[str]
    examples: list[list[str]]
    #: the current answer, before it is critiqued and graded
    attempt: str
    attempt_tokens: tuple[int, int]
    #: the model's feedback on ``attempt`` (None when it gets none) and its stop indicator
    critique: str | None
    critique_done: bool
    trials: Required[Annotated[list[dict[str, Any]], operator.add]]
    success: bool
    prompt_tokens: Required[Annotated[int, operator.add]]
    completion_tokens: Required[Annotated[int, operator.add]]


def route_after_answer(state: SelfRefineState, *, max_trials: int) -> Literal["feedback", "grade"]:
    """Ask for feedback on the new answer unless it is the last the budget allows."""
    return "grade" if len(state.get("trials", [])) + 1 >= max_trials else "feedback"


def route_after_grade(state: SelfRefineState, *, max_trials: int) -> Literal["end", "refine"]:
    """End when the critique of the latest answer said it is done or the rounds are spent; else
    refine. Only the agent's own critique and the round count are read, never the env's grade.

    Example:
        >>> graded_right = {"trials": [{"success": True, "stopped": False}], "success": True}
        >>> route_after_grade(graded_right, max_trials=3)
        'refine'
    """
    trials = state.get("trials", [])
    if len(trials) >= max_trials or (trials and trials[-1].get("stopped")):
        return "end"
    return "refine"


def grade_answer(state: SelfRefineState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Grade ``state["attempt"]`` in the env for the logs and append the trial (a graph node)."""
    p_tok, c_tok = state.get("attempt_tokens", (0, 0))
    critique = state.get("critique")
    record = grade(
        runtime.context,
        state["task_id"],
        state.get("attempt", ""),
        len(state.get("trials", [])),
        prompt_tokens=p_tok,
        completion_tokens=c_tok,
        critique=critique,
        stopped=critique is not None and bool(state.get("critique_done")),
    )
    return {"trials": [record], "success": record["success"]}


def build_self_refine(
    policy: Policy,
    *,
    memory: Any = None,
    max_trials: int = 3,
    params: SamplingParams | None = None,
    feedback_params: SamplingParams | None = None,
    prompts: SelfRefinePrompts | None = None,
    stop_phrase: str | None = None,
    checkpointer: Checkpointer = None,
) -> CompiledStateGraph[SelfRefineState, AgentContext, Any, Any]:
    """A compiled Self-Refine-style graph: answer, critique it, refine until the critique says done.

    Args:
        policy: any ``ponder.models.Policy``; it answers, critiques and refines.
        memory: accepted for a uniform signature and not used.
        max_trials: answers per task, the first included (1 is a single answer, no feedback).
        params: sampling of each answer (the first and the refinements).
        feedback_params: sampling of the feedback; defaults to 96 tokens at ``params``'s temperature.
        prompts: ``SelfRefinePrompts``.
        stop_phrase: replaces ``prompts.stop_phrase``: a critique that contains it ends the loop.
        checkpointer: a LangGraph checkpointer (``SqliteSaver``), for resuming.

    Invoke with ``{"task_id": ...}`` and ``context=AgentContext(env=...)``.
    """
    ensure_policy(policy)
    if max_trials < 1:
        raise ConfigError(f"max_trials must be >= 1, got {max_trials}")
    prompts = prompts or SelfRefinePrompts()
    if stop_phrase is not None:
        if not stop_phrase.strip():
            raise ConfigError("stop_phrase must be a non-empty phrase, e.g. 'It is correct'")
        prompts = dataclasses.replace(prompts, stop_phrase=stop_phrase)
    params = params or SamplingParams(max_tokens=128, temperature=0.7)
    feedback_params = feedback_params or SamplingParams(max_tokens=96, temperature=params.temperature)

    def _answer(prompt: Any, state: SelfRefineState, ctx: AgentContext) -> dict[str, Any]:
        # trial k samples with retry's seed for trial k: the first answer is retry's first attempt
        seed = trial_seed(ctx.seed, state["task_id"], len(state.get("trials", [])))
        c = policy.generate([prompt], dataclasses.replace(params, n=1, seed=seed))[0][0]
        return {
            "attempt": c.text,
            "attempt_tokens": (c.prompt_tokens, c.completion_tokens),
            "critique": None,
            "critique_done": False,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
        }

    def observe(state: SelfRefineState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        return {**start_single_step(runtime.context, state["task_id"], "self-refine"), "success": False}

    def generate(state: SelfRefineState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        prompt = prompts.generate(state["observation"], state.get("examples", []))
        return _answer(prompt, state, runtime.context)

    def feedback(state: SelfRefineState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        prompt = prompts.feedback(state["observation"], state.get("attempt", ""), state.get("examples", []))
        seed = trial_seed(
            runtime.context.seed + _FEEDBACK_SEED, state["task_id"], len(state.get("trials", []))
        )
        c = policy.generate([prompt], dataclasses.replace(feedback_params, n=1, seed=seed))[0][0]
        critique = parse_critique(c.text)
        return {
            "critique": critique,
            "critique_done": prompts.is_done(critique),
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
        }

    def refine(state: SelfRefineState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        # the history is the agent's own text: its answers and its critiques, nothing the env said
        history = [(t["action"], t["critique"] or "") for t in state.get("trials", [])]
        prompt = prompts.refine(state["observation"], history, state.get("examples", []))
        return _answer(prompt, state, runtime.context)

    def after_answer(state: SelfRefineState) -> str:
        return route_after_answer(state, max_trials=max_trials)

    def after_grade(state: SelfRefineState) -> str:
        return route_after_grade(state, max_trials=max_trials)

    g = StateGraph(SelfRefineState, context_schema=AgentContext)
    g.add_node("observe", observe)
    g.add_node("generate", generate)
    g.add_node("feedback", feedback)
    g.add_node("grade", grade_answer)
    g.add_node("refine", refine)
    g.add_edge(START, "observe")
    g.add_edge("observe", "generate")
    for node in ("generate", "refine"):
        g.add_conditional_edges(node, after_answer, {"feedback": "feedback", "grade": "grade"})
    g.add_edge("feedback", "grade")
    g.add_conditional_edges("grade", after_grade, {"end": END, "refine": "refine"})
    return g.compile(checkpointer=checkpointer, name="self-refine")
