"""ponder's errors: one base class and a few flat kinds.

Every message says what went wrong and how to fix it, on one line, so the CLI can print
it as is and exit non-zero.

Example:
    >>> from ponder.errors import UnknownName
    >>> try:
    ...     raise UnknownName.for_registry("env", "maths", ["math", "humaneval"])
    ... except UnknownName as e:
    ...     print(e)
    unknown env 'maths'; choose one of: humaneval, math
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BackendError",
    "BudgetExceeded",
    "ConfigError",
    "DependencyNotInstalled",
    "EnvError",
    "PonderError",
    "SandboxError",
    "UnknownName",
]


class PonderError(Exception):
    """Base of every error ponder raises on purpose."""


class ConfigError(PonderError, ValueError):
    """A configuration value, flag or file is wrong."""


class UnknownName(PonderError, KeyError):
    """A name looked up in a registry (env, agent, policy, search) does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""

    @classmethod
    def for_registry(cls, kind: str, name: str, known: Iterable[str]) -> UnknownName:
        return cls(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(known))}")


class DependencyNotInstalled(PonderError, ImportError):
    """An optional dependency is missing; the message names the install command."""

    @classmethod
    def for_extra(cls, module: str, extra: str) -> DependencyNotInstalled:
        return cls(f"{module} is not installed; install it with: pip install 'ponder[{extra}]'")


class BudgetExceeded(PonderError):
    """A token, call or time budget was spent."""


class BackendError(PonderError, RuntimeError):
    """A model backend (local model, OpenAI-compatible server, Chroma) failed."""


class EnvError(PonderError, RuntimeError):
    """An environment was used against its contract (e.g. step before reset)."""


class SandboxError(PonderError, RuntimeError):
    """The code sandbox could not be set up or run."""
