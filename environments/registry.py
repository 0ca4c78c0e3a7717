"""Environment registry: ``make(name, **kw)`` and ``list_envs()``.

Envs register a factory by name; the factory is imported lazily so that a missing
optional dependency only fails for the env that needs it.

Example:
    >>> from ponder.environments import list_envs, make
    >>> "math" in list_envs()
    True
    >>> make("math", num_tasks=3).task_ids()
    ['math/L1/0', 'math/L1/1', 'math/L1/2']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ponder.environments.base import TextEnv
from ponder.errors import ConfigError, UnknownName

__all__ = ["EnvSpec", "list_envs", "make", "register", "spec"]


@dataclass(frozen=True)
class EnvSpec:
    """How to build one env.

    Attributes:
        name: registry name, e.g. ``"math"``.
        entry_point: ``"module:attr"`` of the TextEnv class or factory, or the callable itself.
        description: one line for ``ponder envs``.
        kwargs: defaults passed to the factory, overridden by ``make``'s keywords.
    """

    name: str
    entry_point: str | Callable[..., TextEnv]
    description: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Callable[..., TextEnv]:
        if callable(self.entry_point):
            return self.entry_point
        module, _, attr = self.entry_point.partition(":")
        return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, EnvSpec] = {}


def register(
    name: str, entry_point: str | Callable[..., TextEnv], *, description: str = "", **kwargs: Any
) -> None:
    """Register an env factory under ``name`` (re-registering a name replaces it)."""
    if not name:
        raise ConfigError("an env needs a non-empty name")
    _REGISTRY[name] = EnvSpec(name, entry_point, description, dict(kwargs))


def spec(name: str) -> EnvSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownName.for_registry("env", name, _REGISTRY) from None


def make(name: str, **kwargs: Any) -> TextEnv:
    """Build the env registered as ``name``; keywords override the registered defaults."""
    s = spec(name)
    factory = s.load()
    try:
        return factory(**{**s.kwargs, **kwargs})
    except TypeError as e:
        raise ConfigError(
            f"bad options for env {name!r}: {e}; see help(ponder.environments.spec({name!r}).load())"
        ) from e


def list_envs() -> dict[str, str]:
    """Registered env names mapped to their one-line descriptions."""
    return {n: s.description for n, s in sorted(_REGISTRY.items())}
