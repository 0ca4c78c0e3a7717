"""Build a policy by kind name (``local``, ``openai``, ``scripted``), as the CLI and runner do.

Example:
    >>> from ponder.models.factory import make_policy
    >>> make_policy("scripted", script=["Answer: 4"]).name
    'scripted'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ponder.errors import UnknownName
from ponder.models.types import BasePolicy

__all__ = ["POLICY_KINDS", "make_policy"]

POLICY_KINDS = ("local", "openai", "scripted")


def make_policy(
    kind: str,
    *,
    model: str | None = None,
    base_url: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    script: Sequence[str] = (),
    **kw: Any,
) -> BasePolicy:
    """The policy of ``kind``; heavy backends are imported only when asked for."""
    if kind == "local":
        from ponder.models.local import LocalPolicy

        return LocalPolicy(model, device=device, dtype=dtype, **kw)
    if kind == "openai":
        from ponder.models.openai_policy import OpenAIPolicy

        return OpenAIPolicy(model, base_url=base_url, **kw)
    if kind == "scripted":
        from ponder.models.fake import ScriptedPolicy

        return ScriptedPolicy(list(script), cycle=True)
    raise UnknownName.for_registry("policy", kind, POLICY_KINDS)
