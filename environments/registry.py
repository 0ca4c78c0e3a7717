"""Environment registry: ``make(name, **kw)``, ``list_envs()``, and the same envs in Gymnasium's registry.

Envs register a factory by name; the factory is imported lazily so that a missing
optional dependency only fails for the env that needs it.

Every env registered here is also in Gymnasium's registry as ``ponder/<name>-v<version>``
(``version`` defaults to 0; bump it when a change makes old configs mean something else).
Gymnasium 1.x has no plugin hook that could register ponder's envs before ponder is
imported, so name the module in the id, as Gymnasium's ``make`` allows:
``gymnasium.make("ponder:ponder/math-v0")`` imports ponder and builds the env; after
``import ponder`` the plain ``gymnasium.make("ponder/math-v0")`` works too.

Other packages add envs without editing ponder by an entry point in the ``ponder.envs``
group, named as the env and pointing at its TextEnv class or factory::

    [project.entry-points."ponder.envs"]
    theirs = "their_package.env:TheirEnv"

The registry looks for these only when asked for a name it lacks, or for the whole list,
and imports an env's code only when that env is built. One that cannot be imported fails
with a one-line ``ConfigError`` naming its distribution; the other envs are unaffected.

Example:
    >>> import gymnasium
    >>> from ponder.environments import list_envs, make
    >>> "math" in list_envs()
    True
    >>> make("math", num_tasks=3).task_ids()
    ['math/L1/0', 'math/L1/1', 'math/L1/2']
    >>> env = gymnasium.make("ponder/math-v0", level=2, num_tasks=3)
    >>> env.unwrapped.task_ids()
    ['math/L2/0', 'math/L2/1', 'math/L2/2']
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import gymnasium

from ponder.environments.base import TextEnv
from ponder.errors import ConfigError, UnknownName

__all__ = [
    "ENTRY_POINT_GROUP",
    "GYM_NAMESPACE",
    "EnvSpec",
    "from_gymnasium",
    "list_envs",
    "make",
    "register",
    "spec",
]

log = logging.getLogger(__name__)

#: the entry-point group other packages add envs by
ENTRY_POINT_GROUP = "ponder.envs"
#: the namespace of ponder's ids in Gymnasium's registry
GYM_NAMESPACE = "ponder"
# a string, not the function, so that Gymnasium's specs stay serialisable (EnvSpec.to_json)
_GYM_ENTRY_POINT = "ponder.environments.registry:from_gymnasium"


@dataclass(frozen=True)
class EnvSpec:
    """How to build one env.

    Attributes:
        name: registry name, e.g. ``"math"``.
        entry_point: ``"module:attr"`` of the TextEnv class or factory, or the callable itself.
        description: one line for ``ponder envs``.
        kwargs: defaults passed to the factory, overridden by ``make``'s keywords.
        version: the ``-vN`` of its Gymnasium id.
        distribution: the installed package whose ``ponder.envs`` entry point added it
            ("" for envs registered in code).
    """

    name: str
    entry_point: str | Callable[..., TextEnv]
    description: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    distribution: str = ""

    @property
    def gym_id(self) -> str:
        """Its id in Gymnasium's registry, e.g. ``"ponder/math-v0"``."""
        return f"{GYM_NAMESPACE}/{self.name}-v{self.version}"

    def load(self) -> Callable[..., TextEnv]:
        if callable(self.entry_point):
            return self.entry_point
        if not self.distribution:
            module, _, attr = self.entry_point.partition(":")
            return getattr(importlib.import_module(module), attr)
        try:
            return EntryPoint(self.name, self.entry_point, ENTRY_POINT_GROUP).load()
        except Exception as e:  # someone else's package: say whose, in one line, and go on
            raise ConfigError(
                f"env {self.name!r} from the package {self.distribution} cannot be loaded "
                f"({self.entry_point}: {type(e).__name__}: {e}); fix or uninstall that package"
            ) from e


_REGISTRY: dict[str, EnvSpec] = {}
_plugins_loaded = False
_plugins_lock = threading.Lock()  # episodes build envs from several threads


def register(
    name: str,
    entry_point: str | Callable[..., TextEnv],
    *,
    description: str = "",
    version: int = 0,
    **kwargs: Any,
) -> None:
    """Register an env factory under ``name`` (re-registering a name replaces it), and in
    Gymnasium's registry as ``ponder/<name>-v<version>``.

    Example:
        >>> from ponder.environments import spec
        >>> spec("toy-rooms").gym_id  # registered as register("toy-rooms", "...:ToyRoomsEnv", ...)
        'ponder/toy-rooms-v0'
    """
    if not name:
        raise ConfigError("an env needs a non-empty name")
    _add(EnvSpec(name, entry_point, description, dict(kwargs), version))


def _add(s: EnvSpec) -> None:
    _REGISTRY[s.name] = s
    # re-registering replaces the old id quietly, as it does here (Gymnasium would warn)
    gymnasium.registry.pop(s.gym_id, None)
    try:
        gymnasium.register(s.gym_id, entry_point=_GYM_ENTRY_POINT, kwargs={"ponder_env": s.name})
    except gymnasium.error.Error as e:  # a name Gymnasium's ids cannot hold: the env still works here
        log.warning("env %r is not in Gymnasium's registry: %s", s.name, e)


def from_gymnasium(ponder_env: str, **kwargs: Any) -> TextEnv:
    """What ``gymnasium.make("ponder/<name>-vN", **kwargs)`` calls: ``make(ponder_env, **kwargs)``."""
    return make(ponder_env, **kwargs)


def _load_plugins() -> None:
    """Register the envs of installed packages' ``ponder.envs`` entry points (once; their code
    is imported only when the env is built)."""
    global _plugins_loaded
    with _plugins_lock:
        if not _plugins_loaded:
            _register_plugins()
            _plugins_loaded = True


def _register_plugins() -> None:
    try:
        found = entry_points(group=ENTRY_POINT_GROUP)
    except Exception as e:  # broken metadata somewhere must not break ponder's own envs
        log.warning("could not read the %r entry points: %s", ENTRY_POINT_GROUP, e)
        return
    for ep in found:
        dist = ep.dist
        who = f"{dist.name} {dist.version}" if dist is not None else "an unknown package"
        if not ep.name or ep.name in _REGISTRY:
            log.warning("ignoring the %r env of %s: the name is empty or already taken", ep.name, who)
            continue
        summary = str((dist.metadata.get_all("Summary") or [""])[0]).strip() if dist is not None else ""
        description = f"{summary} (from {who})" if summary else f"from {who}"
        _add(EnvSpec(ep.name, ep.value, description, distribution=who))


def spec(name: str) -> EnvSpec:
    """The ``EnvSpec`` registered as ``name`` (an installed package's entry point included)."""
    if name not in _REGISTRY:
        _load_plugins()
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
    """Registered env names (installed packages' entry points included) mapped to their one-line descriptions."""
    _load_plugins()
    return {n: s.description for n, s in sorted(_REGISTRY.items())}
