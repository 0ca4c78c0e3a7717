"""Every agent declared once: its factory, what it is, the run options it reads, what it needs.

``ponder agents``, the runner (which options it passes, whether it opens a memory store, how many
trials an episode holds) and the checks of a run's options all read ``AGENT_SPECS``. Adding an
agent is one ``register_agent`` call.

Example:
    >>> from ponder.agents.registry import AGENT_SPECS
    >>> spec = AGENT_SPECS["debate"]
    >>> spec.options, spec.uses_memory, spec.one_trial
    (('agents', 'rounds', 'aggregator'), False, True)
    >>> sorted(s.name for s in AGENT_SPECS.values() if s.embodied)
    ['embodied', 'embodied-plan', 'embodied-retry']

A user's own agent (a factory shaped like the others) joins the CLI the same way:

    >>> from ponder.agents.registry import AgentSpec, register_agent, unregister_agent
    >>> from ponder.agents import build_retry
    >>> _ = register_agent(AgentSpec("my-retry", build_retry, "retry under another name"))
    >>> "my-retry" in AGENT_SPECS
    True
    >>> unregister_agent("my-retry")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from ponder.agents.debate import build_debate
from ponder.agents.embodied import build_embodied_agent
from ponder.agents.reflexion import build_reflexion, build_retry, build_retry_feedback
from ponder.agents.search_agent import build_search_agent
from ponder.agents.self_refine import build_self_refine
from ponder.agents.team import build_team_agent
from ponder.errors import ConfigError

__all__ = ["AGENT_SPECS", "AgentSpec", "register_agent", "unregister_agent"]

#: the run options of a Reflexion-style loop: memory modes, agent-written tests, search per attempt
_LOOP_OPTIONS = (
    "memory_modes",
    "concept",
    "insight_set",
    "agent_tests",
    "actor_search",
    "n",
    "prm",
    "search_tokens",
    "search_options",
    "step_tokens",
    "max_steps",
)
_EMBODIED_OPTIONS = ("memory_modes", "concept", "insight_set", "env_steps")


@dataclass(frozen=True)
class AgentSpec:
    """One agent, as the CLI and the runner know it.

    Attributes:
        name: the ``--agent`` name.
        factory: ``factory(policy, *, memory=None, max_trials=3, checkpointer=None, params=..., **options)``
            returning a compiled LangGraph graph.
        description: one line for ``ponder agents``.
        options: the ``RunConfig`` options it reads beyond those every agent reads (policy,
            trials, sampling); the runner turns them into the factory's keyword arguments
            (``RunConfig`` says under which name), and a run that sets another agent's option
            is refused.
        uses_memory: the runner opens a memory store for it.
        embodied: it acts over many steps in multi-step envs (ScienceWorld, TextWorld).
        one_trial: an episode is one trial whatever ``--trials`` says (debate).
    """

    name: str
    factory: Callable[..., Any]
    description: str
    options: tuple[str, ...] = ()
    uses_memory: bool = False
    embodied: bool = False
    one_trial: bool = False

    def __post_init__(self) -> None:
        if not self.name or not callable(self.factory):
            raise ConfigError(
                "an AgentSpec needs a name and a callable factory, e.g. AgentSpec('x', build_retry, '...')"
            )


AGENT_SPECS: dict[str, AgentSpec] = {}


def register_agent(spec: AgentSpec, *, replace: bool = False) -> AgentSpec:
    """Add ``spec`` to ``AGENT_SPECS`` (and so to ``ponder run --agent`` and ``ponder agents``).

    Options it names must be ``RunConfig`` fields; a name taken is refused unless ``replace``.
    """
    from ponder.config import RunConfig

    unknown = [o for o in spec.options if o not in RunConfig.model_fields]
    if unknown:
        raise ConfigError(
            f"agent {spec.name!r} names unknown run options {unknown}; add them to RunConfig first"
        )
    if spec.name in AGENT_SPECS and not replace:
        raise ConfigError(f"agent {spec.name!r} is already registered; pass replace=True to replace it")
    AGENT_SPECS[spec.name] = spec
    return spec


def unregister_agent(name: str) -> None:
    """Remove an agent ``register_agent`` added (tests, notebooks)."""
    AGENT_SPECS.pop(name, None)


for _spec in (
    AgentSpec(
        "reflexion",
        build_reflexion,
        "act, evaluate, self-reflect on failure, retry seeing the last attempt, its feedback and "
        "the reflections (Shinn et al. 2023)",
        _LOOP_OPTIONS,
        uses_memory=True,
    ),
    AgentSpec(
        "retry-feedback",
        build_retry_feedback,
        "reflexion's ablation: retry seeing the last attempt and its feedback, no reflection",
        _LOOP_OPTIONS,
    ),
    AgentSpec(
        "retry",
        build_retry,
        "retry blind (no feedback, no reflection): the resampling baseline",
        _LOOP_OPTIONS,
    ),
    AgentSpec(
        "self-refine",
        build_self_refine,
        "Self-Refine-style: answer, critique its own answer, refine from its answers and critiques "
        "until the critique says 'It is correct' or --trials answers; no env feedback (Madaan et al. 2023)",
    ),
    AgentSpec(
        "search",
        build_search_agent,
        "PRM-guided search per task (beam, DVTS, best-of-N, MCTS, LATS, ...; --algorithm, --prm)",
        ("algorithm", "n", "prm", "search_tokens", "search_options", "step_tokens", "max_steps"),
    ),
    AgentSpec(
        "debate",
        build_debate,
        "multi-agent debate: --agents N answer, read each other's answers for --rounds R, "
        "then --aggregator majority|judge decides (Du et al. 2023)",
        ("agents", "rounds", "aggregator"),
        one_trial=True,
    ),
    AgentSpec(
        "team",
        build_team_agent,
        "agents on a networkx topology (--topology chain|star|mesh|layered|random, --agents N); "
        "team reflection assigns advice per agent, kept in memory",
        ("agents", "rounds", "topology"),
        uses_memory=True,
    ),
    AgentSpec(
        "embodied",
        partial(build_embodied_agent, name="embodied"),
        "think/act loop in a text world, actions grounded to admissible ones; Reflexion across "
        "trials; CLIN causal lessons in memory (--memory-modes concept)",
        _EMBODIED_OPTIONS,
        uses_memory=True,
        embodied=True,
    ),
    AgentSpec(
        "embodied-plan",
        partial(build_embodied_agent, plan=True, name="embodied-plan"),
        "the embodied agent that plans first and revises the plan when an observation contradicts it",
        _EMBODIED_OPTIONS,
        uses_memory=True,
        embodied=True,
    ),
    AgentSpec(
        "embodied-retry",
        partial(build_embodied_agent, reflect=False, name="embodied-retry"),
        "the embodied agent without reflection between trials: the baseline",
        _EMBODIED_OPTIONS,
        uses_memory=True,
        embodied=True,
    ),
):
    AGENT_SPECS[_spec.name] = _spec
