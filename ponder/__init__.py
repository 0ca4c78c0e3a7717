"""ponder: verbal reinforcement search with LLM agents.

Agents that improve at test time through reflection, memory and PRM-guided search,
orchestrated by LangGraph, remembered in Chroma, thinking with a local
transformers policy or any OpenAI-compatible server.

Example:
    >>> import ponder
    >>> from ponder.agents import build_reflexion
    >>> from ponder.models import ScriptedPolicy
    >>> env = ponder.make("math", level=1, num_tasks=1, seed=0)
    >>> graph = build_reflexion(ScriptedPolicy(["Answer: 0"], cycle=True), max_trials=1)
"""

from ponder.environments import check_env, list_envs, make
from ponder.errors import (
    BackendError,
    BudgetExceeded,
    ConfigError,
    DependencyNotInstalled,
    EnvError,
    PonderError,
    SandboxError,
    UnknownName,
)

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BudgetExceeded",
    "ConfigError",
    "DependencyNotInstalled",
    "EnvError",
    "PonderError",
    "SandboxError",
    "UnknownName",
    "__version__",
    "check_env",
    "list_envs",
    "make",
]
