"""Every agent of ``AGENT_SPECS`` as a LangGraph Server graph (``langgraph.json``, ``langgraph dev``).

``langgraph.json`` at the repo root names one graph per agent (``reflexion``, ``retry``,
``search``, ``debate``, ...), each a factory of this module. LangGraph Server calls the factory
for every run with the run's config, so a run started from Studio or the SDK is a real episode::

    settings (the run's config["configurable"], or its context: the same keys)
      -> RunConfig (validated: a bad value is the run's one-line error)
      -> policy (make_policy, kept per settings in the process), memory (kept per directory or
         URL), the agent graph (its AgentSpec factory with the run's options)
    input {"task_id": "math/L1/0"} -> the episode's state: trials, success, token counts

Settings are ``RunConfig``'s keys that say what an episode is (``SETTINGS``: policy, script,
model, base_url, env, env_kwargs, feedback, tasks, seed, trials, temperature, max_tokens,
memory, memory_url, embedder, memory_modes and each agent's own options) plus ``episode_id``
(memory provenance). Served graphs keep no memory unless ``memory`` (a directory) or
``memory_url`` is set. A graph's nodes find the env in LangGraph's runtime context: a served
graph's context schema is ``ServeContext``, which LangGraph builds from the same settings; it
makes the env on first use and offers what ``AgentContext`` offers.

``python -m ponder.langgraph_app`` prints the ``langgraph.json`` these factories need.

Example (in-process; the server does the same per run):
    >>> graph = build_served_graph("retry", {"policy": "scripted", "script": ["Answer: 13"], "trials": 2})
    >>> out = graph.invoke({"task_id": "math/L1/0"}, context={"env": "math", "tasks": 1})
    >>> out["success"], len(out["trials"])
    (True, 1)
    >>> build_served_graph("retry", {"policy": "scripted", "script": ["4"], "polcy": "local"})
    Traceback (most recent call last):
    ...
    ponder.errors.ConfigError: unknown setting 'polcy' for a served agent; valid settings: ...
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, PrivateAttr

from ponder.agents import AGENT_SPECS
from ponder.config import RunConfig
from ponder.errors import ConfigError, PonderError, UnknownName

if TYPE_CHECKING:  # the server resolves these names itself when it reads a factory's signature
    from langchain_core.runnables import RunnableConfig
    from langgraph_sdk.runtime import ServerRuntime

    from ponder.environments.base import TextEnv
    from ponder.models.types import Policy

__all__ = [
    "GRAPH_IDS",
    "SETTINGS",
    "ServeContext",
    "build_served_graph",
    "close_shared",
    "graph_attr",
    "langgraph_config",
    "served_config",
    "served_graph",
]

#: RunConfig options about a run as a whole, not an episode: not settings of a served graph
_RUN_ONLY = ("agent", "concurrency", "name", "runs_dir", "resume")
#: what a served run may set: RunConfig's episode options, and the episode id for memory provenance
SETTINGS: tuple[str, ...] = (*(k for k in RunConfig.model_fields if k not in _RUN_ONLY), "episode_id")
#: the settings the env is made from (``ServeContext``)
_ENV_SETTINGS = ("env", "env_kwargs", "feedback", "tasks", "seed")


def served_config(agent: str, settings: Mapping[str, Any]) -> RunConfig:
    """``settings`` checked as ``RunConfig`` for ``agent``: an unknown key, a bad value, an unknown
    env, a search setting that cannot work or memory modes without a memory are one-line errors."""
    from ponder.environments import spec
    from ponder.runner import check_search

    if agent not in AGENT_SPECS:
        raise UnknownName.for_registry("agent", agent, AGENT_SPECS)
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        keys = ", ".join(repr(k) for k in unknown)
        raise ConfigError(
            f"unknown setting{'s' if len(unknown) > 1 else ''} {keys} for a served agent; "
            f"valid settings: {', '.join(sorted(SETTINGS))}"
        )
    cfg = RunConfig(agent=agent, **{k: v for k, v in settings.items() if k != "episode_id"})
    spec(cfg.env)
    check_search(cfg)
    if cfg.memory_modes and not (cfg.memory or cfg.memory_url):
        raise ConfigError("memory_modes needs a memory: set memory (a directory) or memory_url")
    return cfg


def build_served_graph(agent: str, settings: Mapping[str, Any], *, for_execution: bool = True) -> Any:
    """The compiled graph of ``agent`` for one run with ``settings``, its context schema
    ``ServeContext`` (invoke it with the settings as the context, or a ``ServeContext``).

    ``for_execution=False`` (the server reading a thread's state or drawing the graph) puts a
    stand-in scripted policy in place of the real one: nothing is generated then, and the
    graph's shape does not depend on the policy. Settings a read cannot build a search from
    (no PRM for beam search, the default) are drawn with the judge PRM instead.
    """
    from ponder.models.fake import ScriptedPolicy
    from ponder.runner import agent_options

    try:
        cfg = served_config(agent, settings)
    except PonderError:
        if for_execution or "prm" not in AGENT_SPECS[agent].options:
            raise
        # a read needs the graph's shape only, which no PRM changes: draw a search that has one
        cfg = served_config(agent, {"prm": "judge"})
    spec = AGENT_SPECS[agent]
    policy = _policy(cfg) if for_execution else ScriptedPolicy(["(a graph read, not a run)"])
    memory = _memory(cfg) if spec.uses_memory else None
    graph = spec.factory(
        policy, memory=memory, max_trials=cfg.trials, checkpointer=None, **agent_options(cfg, policy)
    )
    return graph.copy(update={"context_schema": ServeContext})


def served_graph(agent: str) -> Callable[..., Any]:
    """LangGraph Server's factory for ``agent``: ``async (config, runtime) -> graph``.

    A run's settings are its config's known keys updated by its context (which must hold known
    keys only); the graph is built on a worker thread, since loading a model or opening a
    memory store would block the server's event loop.
    """

    async def factory(config: RunnableConfig, runtime: ServerRuntime) -> Any:
        execution = getattr(runtime, "execution_runtime", None)
        settings = {k: v for k, v in (config.get("configurable") or {}).items() if k in SETTINGS}
        context = getattr(execution, "context", None)
        if isinstance(context, Mapping):
            settings.update(context)
        return await asyncio.to_thread(
            build_served_graph, agent, settings, for_execution=execution is not None
        )

    name = graph_attr(agent)
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"The {agent!r} agent for LangGraph Server (``served_graph({agent!r})``)."
    return factory


class ServeContext(BaseModel):
    """The runtime context of a served graph, built from the run's settings: what
    ``AgentContext`` offers (``env``, ``seed``, ``run_id``, ``episode_id``, ``artifacts``).

    The env is made on first use, on the node's worker thread (never on the server's event
    loop), and closed when the context is collected. Only the env settings are read here
    (``env``, ``env_kwargs``, ``feedback``, ``tasks``, ``seed``); the graph's factory checks
    the rest.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    seed: int = 0
    run_id: str = "served"
    episode_id: str = ""
    artifacts: Path | None = None
    _cfg: RunConfig = PrivateAttr()
    _env: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **settings: Any) -> None:
        cfg = RunConfig(**{k: v for k, v in settings.items() if k in _ENV_SETTINGS})
        super().__init__(
            seed=cfg.seed,
            run_id=settings.get("run_id") or "served",
            episode_id=settings.get("episode_id") or uuid.uuid4().hex,
        )
        self._cfg = cfg

    @property
    def env(self) -> TextEnv:
        with self._lock:
            if self._env is None:
                from ponder.runner import make_env_for

                self._env = make_env_for(self._cfg)
                weakref.finalize(self, self._env.close)
            return self._env

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The settings, as Studio's form and the server's context filter read them."""
        props = RunConfig.model_json_schema()["properties"]
        out = {k: {f: v for f, v in props[k].items() if f != "ponder"} for k in SETTINGS if k in props}
        out["memory"]["description"] = "a memory directory (Chroma); none or unset: no memory"
        out["episode_id"] = {"type": "string", "title": "Episode Id", "description": "memory provenance"}
        return {"title": "ServeContext", "type": "object", "properties": out}


def graph_attr(agent: str) -> str:
    """The module attribute that holds ``agent``'s factory (``retry-feedback`` -> ``retry_feedback``)."""
    return agent.replace("-", "_")


def langgraph_config() -> dict[str, Any]:
    """What ``langgraph.json`` holds: every agent of ``AGENT_SPECS`` as a graph of this module.

    Example:
        >>> langgraph_config()["graphs"]["retry-feedback"]
        'ponder.langgraph_app:retry_feedback'
    """
    graphs = {a: f"ponder.langgraph_app:{graph_attr(a)}" for a in AGENT_SPECS}
    return {"$schema": "https://langgra.ph/schema.json", "dependencies": ["."], "graphs": graphs}


# -- what runs share in one server process --------------------------------------------------
_LOCK = threading.Lock()
_POLICIES: dict[tuple[Any, ...], Policy] = {}
_MEMORIES: dict[tuple[Any, ...], Any] = {}


def _policy(cfg: RunConfig) -> Policy:
    """The run's policy; a local model or a client is made once per settings and shared."""
    from ponder.models.factory import make_policy

    if cfg.policy == "scripted":  # cheap, and it cycles through its replies: one per run
        return make_policy("scripted", script=cfg.script)
    key = (cfg.policy, cfg.model, cfg.base_url, cfg.device, cfg.dtype)
    with _LOCK:  # one load per key, however many runs ask at once
        if key not in _POLICIES:
            extra: dict[str, Any] = {"max_concurrency": 32} if cfg.policy == "openai" else {}
            _POLICIES[key] = make_policy(
                cfg.policy,
                model=cfg.model,
                base_url=cfg.base_url,
                device=cfg.device,
                dtype=cfg.dtype,
                **extra,
            )
        return _POLICIES[key]


def _memory(cfg: RunConfig) -> Any:
    """The memory store a run names (shared by every run that names it), or None."""
    if cfg.memory_off or not (cfg.memory or cfg.memory_url):
        return None
    from ponder.memory import MemoryStore

    key = (cfg.memory, cfg.memory_url, cfg.embedder)
    with _LOCK:
        if key not in _MEMORIES:
            _MEMORIES[key] = (
                MemoryStore.connect(cfg.memory_url, embedder=cfg.embedder)
                if cfg.memory_url
                else MemoryStore.open(cfg.memory_dir, embedder=cfg.embedder)
            )
        return _MEMORIES[key]


def close_shared() -> None:
    """Close and forget the policies and memory stores runs have shared in this process (a
    server shutting down, a test); the next run makes them again."""
    with _LOCK:
        held = [*_POLICIES.values(), *_MEMORIES.values()]
        _POLICIES.clear()
        _MEMORIES.clear()
    for thing in held:
        close = getattr(thing, "close", None)
        if close is not None:
            close()


#: the graph ids ``langgraph.json`` serves: every agent of ``AGENT_SPECS``
GRAPH_IDS: tuple[str, ...] = tuple(AGENT_SPECS)
for _agent in GRAPH_IDS:
    globals()[graph_attr(_agent)] = served_graph(_agent)


if __name__ == "__main__":
    print(json.dumps(langgraph_config(), indent=2))
