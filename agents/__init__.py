"""Agent factories returning compiled LangGraph graphs (``ponder.agents``).

``AGENTS`` maps a name to its factory; every factory takes ``(policy, *, memory=None,
max_trials=..., **kw)``.

Example:
    >>> from ponder.agents import AGENTS
    >>> sorted(AGENTS)
    ['reflexion', 'retry', 'search']
"""

from collections.abc import Callable
from typing import Any

from ponder.agents.prompts import ReflexionPrompts, parse_reflection
from ponder.agents.reflexion import build_reflexion, build_retry, route_after_evaluate
from ponder.agents.search_agent import SearchActor, build_search_agent
from ponder.agents.state import AgentContext, EpisodeState, TrialRecord

__all__ = [
    "AGENTS",
    "AGENT_DESCRIPTIONS",
    "USES_MEMORY",
    "AgentContext",
    "EpisodeState",
    "ReflexionPrompts",
    "SearchActor",
    "TrialRecord",
    "build_reflexion",
    "build_retry",
    "build_search_agent",
    "parse_reflection",
    "route_after_evaluate",
]

#: name -> factory(policy, *, memory=None, max_trials=3, **kw) -> compiled graph
AGENTS: dict[str, Callable[..., Any]] = {
    "reflexion": build_reflexion,
    "retry": build_retry,
    "search": build_search_agent,
}

#: agents that read or write memory; the runner opens a store only for these
USES_MEMORY: frozenset[str] = frozenset({"reflexion"})

AGENT_DESCRIPTIONS: dict[str, str] = {
    "reflexion": "act, evaluate, self-reflect on failure, retry with the reflections (Shinn et al. 2023)",
    "retry": "the same loop without reflection: the resampling baseline for reflexion",
    "search": "PRM-guided search per task (beam, DVTS, best-of-N, MCTS, LATS, ...; --algorithm, --prm)",
}
