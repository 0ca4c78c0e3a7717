"""Agent factories returning compiled LangGraph graphs (``ponder.agents``).

``AGENTS`` maps a name to its factory; every factory takes ``(policy, *, memory=None,
max_trials=..., **kw)``.

Example:
    >>> from ponder.agents import AGENTS
    >>> sorted(AGENTS)
    ['debate', 'embodied', 'embodied-plan', 'embodied-retry', 'reflexion', 'retry', 'retry-feedback', 'search', 'team']
"""

from collections.abc import Callable
from functools import partial
from typing import Any

from ponder.agents.debate import build_debate
from ponder.agents.embodied import EmbodiedState, build_embodied_agent
from ponder.agents.prompts import ReflexionPrompts, parse_reflection
from ponder.agents.reflexion import build_reflexion, build_retry, build_retry_feedback, route_after_evaluate
from ponder.agents.search_agent import SearchActor, build_search_agent
from ponder.agents.state import AgentContext, EpisodeState, TrialRecord
from ponder.agents.team import build_team, build_team_agent
from ponder.agents.topology import make_topology

__all__ = [
    "AGENTS",
    "AGENT_DESCRIPTIONS",
    "EMBODIED",
    "ONE_TRIAL",
    "USES_MEMORY",
    "AgentContext",
    "EmbodiedState",
    "EpisodeState",
    "ReflexionPrompts",
    "SearchActor",
    "TrialRecord",
    "build_debate",
    "build_embodied_agent",
    "build_reflexion",
    "build_retry",
    "build_retry_feedback",
    "build_search_agent",
    "build_team",
    "make_topology",
    "parse_reflection",
    "route_after_evaluate",
    "trials_for",
]

#: name -> factory(policy, *, memory=None, max_trials=3, **kw) -> compiled graph
AGENTS: dict[str, Callable[..., Any]] = {
    "reflexion": build_reflexion,
    "retry": build_retry,
    "retry-feedback": build_retry_feedback,
    "search": build_search_agent,
    "debate": build_debate,
    "team": build_team_agent,
    "embodied": partial(build_embodied_agent, name="embodied"),
    "embodied-plan": partial(build_embodied_agent, plan=True, name="embodied-plan"),
    "embodied-retry": partial(build_embodied_agent, reflect=False, name="embodied-retry"),
}

#: agents whose episode is one trial whatever ``max_trials`` says
ONE_TRIAL: frozenset[str] = frozenset({"debate"})


def trials_for(agent: str, max_trials: int) -> int:
    """The trials an episode of ``agent`` runs when none succeeds (what a finished one holds)."""
    return 1 if agent in ONE_TRIAL else max_trials


#: agents that act over many steps in multi-step envs (ScienceWorld, TextWorld)
EMBODIED: frozenset[str] = frozenset({"embodied", "embodied-plan", "embodied-retry"})

#: agents that read or write memory; the runner opens a store only for these
USES_MEMORY: frozenset[str] = frozenset({"reflexion", "team", *EMBODIED})

AGENT_DESCRIPTIONS: dict[str, str] = {
    "reflexion": "act, evaluate, self-reflect on failure, retry seeing the last attempt, its feedback and "
    "the reflections (Shinn et al. 2023)",
    "retry-feedback": "reflexion's ablation: retry seeing the last attempt and its feedback, no reflection",
    "retry": "retry blind (no feedback, no reflection): the resampling baseline",
    "search": "PRM-guided search per task (beam, DVTS, best-of-N, MCTS, LATS, ...; --algorithm, --prm)",
    "debate": "multi-agent debate: --agents N answer, read each other's answers for --rounds R, "
    "then --aggregator majority|judge decides (Du et al. 2023)",
    "team": "agents on a networkx topology (--topology chain|star|mesh|layered|random, --agents N); "
    "team reflection assigns advice per agent, kept in memory",
    "embodied": "think/act loop in a text world, actions grounded to admissible ones; Reflexion across "
    "trials; CLIN causal lessons in memory (--memory-modes concept)",
    "embodied-plan": "the embodied agent that plans first and revises the plan when an observation contradicts it",
    "embodied-retry": "the embodied agent without reflection between trials: the baseline",
}
