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

import errno
from collections.abc import Iterable

__all__ = [
    "STORAGE_HINT",
    "BackendError",
    "BudgetExceeded",
    "ConfigError",
    "DependencyNotInstalled",
    "EnvError",
    "PonderError",
    "SandboxError",
    "UnknownName",
    "storage_problem",
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


STORAGE_HINT = "finished work is kept; run the same command again (a run with --resume) once fixed"

_FULL = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = (errno.EROFS,)
_DENIED = (errno.EACCES, errno.EPERM)


def storage_problem(exc: BaseException) -> str | None:
    """One line for an exception caused by a full disk or a file that cannot be written, else None.

    Looks through the exception's causes, and knows the forms SQLite (checkpoints) and Chroma
    (memory) give these problems.

    Example:
        >>> storage_problem(OSError(28, "No space left on device", "runs/a/episodes.jsonl"))
        'the disk is full (writing runs/a/episodes.jsonl): free some space; finished work is kept; run the same command again (a run with --resume) once fixed'
        >>> storage_problem(ValueError("x")) is None
        True
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e).lower()
        path = e.filename if isinstance(e, OSError) and e.filename else None
        code = e.errno if isinstance(e, OSError) else None
        if code in _FULL or "disk is full" in text or "no space left" in text or "(code: 13)" in text:
            return f"the disk is full{f' (writing {path})' if path else ''}: free some space; {STORAGE_HINT}"
        if code in _READ_ONLY or "readonly database" in text or "read-only file system" in text:
            return (
                f"cannot write {path or 'the run or its memory'}: the file system is read-only; "
                f"use a writable place (--runs-dir, --out, --memory) or copy the run there; {STORAGE_HINT}"
            )
        if code in _DENIED and path:
            return f"no permission to write {path}: fix its permissions or use another place; {STORAGE_HINT}"
        e = e.__cause__ or e.__context__
    return None
