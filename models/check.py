"""``ensure_policy``: refuse, at once and in one line, what is not a ponder ``Policy``.

Agent factories and ``ponder.runner.run`` call it first, so a wrong object fails where it is
passed rather than deep inside a LangGraph node (a LangChain ``ChatOpenAI`` given as the policy
used to end in ``TypeError: 'Prompt' object is not iterable``).

Example:
    >>> from ponder.models import ScriptedPolicy
    >>> ensure_policy(ScriptedPolicy(["hi"]))
    >>> ensure_policy("local")
    Traceback (most recent call last):
    ...
    ponder.errors.ConfigError: policy 'local' is a name, not a ponder Policy; build it with make_policy('local') (ponder.models.factory)
    >>> ensure_policy([ScriptedPolicy(["a"]), object()], many=True)
    Traceback (most recent call last):
    ...
    ponder.errors.ConfigError: policy 2 of 2 (object) is not a ponder Policy: it lacks name, usage, generate, agenerate; subclass ponder.models.BasePolicy, or wrap a LangChain chat model in LangChainPolicy
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from ponder.errors import ConfigError
from ponder.models.types import Policy

__all__ = ["ensure_policy"]

_MEMBERS = ("name", "usage", "generate", "agenerate")
_WRAP = "wrap it: LangChainPolicy(model) (from ponder.models.langchain_policy import LangChainPolicy)"


def ensure_policy(policy: Any, *, many: bool = False) -> None:
    """Raise ``ConfigError`` unless ``policy`` is a ponder ``Policy``.

    Args:
        policy: the object an agent or a run was given as its policy.
        many: also accept a list of policies (debate and team agents), each checked.
    """
    if many and isinstance(policy, Sequence) and not isinstance(policy, str):
        for i, p in enumerate(policy):
            _check(p, f"policy {i + 1} of {len(policy)}")
        return
    _check(policy, "policy")


def _check(obj: Any, what: str) -> None:
    if isinstance(obj, Policy):
        return
    kind = type(obj).__name__
    langchain = _langchain_kind(obj)
    if langchain == "chat model":
        raise ConfigError(f"{what} {kind} is a LangChain chat model, not a ponder Policy; {_WRAP}")
    if langchain == "runnable":
        raise ConfigError(
            f"{what} {kind} is a LangChain runnable, not a ponder Policy; LangChainPolicy wraps a chat "
            "model itself (a BaseChatModel such as ChatOpenAI): pass that, not a chain or a .bind() of it"
        )
    if isinstance(obj, str):
        raise ConfigError(
            f"{what} {obj!r} is a name, not a ponder Policy; build it with make_policy({obj!r}) "
            "(ponder.models.factory)"
        )
    missing = ", ".join(m for m in _MEMBERS if not hasattr(obj, m))
    raise ConfigError(
        f"{what} ({kind}) is not a ponder Policy: it lacks {missing}; subclass ponder.models.BasePolicy, "
        "or wrap a LangChain chat model in LangChainPolicy"
    )


def _langchain_kind(obj: Any) -> str | None:
    """``"chat model"``, ``"runnable"`` or None; langchain-core is looked at only when it is
    already imported (an object of its classes cannot exist otherwise), so this costs no import."""
    if "langchain_core" not in sys.modules:
        return None
    from langchain_core.language_models import BaseChatModel
    from langchain_core.runnables import Runnable

    if isinstance(obj, BaseChatModel):
        return "chat model"
    return "runnable" if isinstance(obj, Runnable) else None
