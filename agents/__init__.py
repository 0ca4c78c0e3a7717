"""Agent factories returning compiled LangGraph graphs (``ponder.agents``).

``AGENT_SPECS`` declares every agent once (``ponder.agents.registry``): its factory, description,
the run options it reads, whether it uses memory or is embodied. ``AGENTS`` maps a name to its
factory; every factory takes ``(policy, *, memory=None, max_trials=..., **kw)``.

Example:
    >>> from ponder.agents import AGENTS
    >>> sorted(AGENTS)
    ['debate', 'embodied', 'embodied-plan', 'embodied-retry', 'reflexion', 'retry', 'retry-feedback', 'search', 'self-refine', 'team']
"""

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ponder.agents.debate import build_debate
from ponder.agents.embodied import EmbodiedState, build_embodied_agent
from ponder.agents.prompts import ReflexionPrompts, parse_reflection
from ponder.agents.reflexion import build_reflexion, build_retry, build_retry_feedback, route_after_evaluate
from ponder.agents.registry import AGENT_SPECS, AgentSpec, register_agent, unregister_agent
from ponder.agents.search_agent import SearchActor, build_search_agent
from ponder.agents.self_refine import SelfRefineState, build_self_refine
from ponder.agents.self_refine_prompts import SelfRefinePrompts
from ponder.agents.state import AgentContext, EpisodeState, TrialRecord
from ponder.agents.team import build_team, build_team_agent
from ponder.agents.topology import make_topology

__all__ = [
    "AGENTS",
    "AGENT_DESCRIPTIONS",
    "AGENT_SPECS",
    "EMBODIED",
    "ONE_TRIAL",
    "USES_MEMORY",
    "AgentContext",
    "AgentSpec",
    "EmbodiedState",
    "EpisodeState",
    "ReflexionPrompts",
    "SearchActor",
    "SelfRefinePrompts",
    "SelfRefineState",
    "TrialRecord",
    "build_debate",
    "build_embodied_agent",
    "build_reflexion",
    "build_retry",
    "build_retry_feedback",
    "build_search_agent",
    "build_self_refine",
    "build_team",
    "build_team_agent",
    "make_topology",
    "parse_reflection",
    "register_agent",
    "route_after_evaluate",
    "trials_for",
    "unregister_agent",
]


class _Factories(Mapping[str, Callable[..., Any]]):
    """``AGENTS``: name -> factory, read from ``AGENT_SPECS`` (registered agents included)."""

    def __getitem__(self, name: str) -> Callable[..., Any]:
        return AGENT_SPECS[name].factory

    def __iter__(self) -> Iterator[str]:
        return iter(AGENT_SPECS)

    def __len__(self) -> int:
        return len(AGENT_SPECS)


#: name -> factory(policy, *, memory=None, max_trials=3, **kw) -> compiled graph (a live view of AGENT_SPECS)
AGENTS: Mapping[str, Callable[..., Any]] = _Factories()


def trials_for(agent: str, max_trials: int) -> int:
    """The trials an episode of ``agent`` runs when none succeeds (what a finished one holds)."""
    spec = AGENT_SPECS.get(agent)
    return 1 if spec is not None and spec.one_trial else max_trials


# the sets below are the built-in agents'; code that must see registered agents reads AGENT_SPECS
#: agents whose episode is one trial whatever ``max_trials`` says
ONE_TRIAL: frozenset[str] = frozenset(n for n, s in AGENT_SPECS.items() if s.one_trial)
#: agents that act over many steps in multi-step envs (ScienceWorld, TextWorld)
EMBODIED: frozenset[str] = frozenset(n for n, s in AGENT_SPECS.items() if s.embodied)
#: agents that read or write memory; the runner opens a store only for these
USES_MEMORY: frozenset[str] = frozenset(n for n, s in AGENT_SPECS.items() if s.uses_memory)
AGENT_DESCRIPTIONS: dict[str, str] = {n: s.description for n, s in AGENT_SPECS.items()}
