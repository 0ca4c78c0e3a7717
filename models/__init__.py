"""Policies (text generators), PRMs and embedders (``ponder.models``).

Example:
    >>> from ponder.models import Prompt, SamplingParams, ScriptedPolicy
    >>> ScriptedPolicy(["hi"]).generate([Prompt.user("hello")], SamplingParams())[0][0].text
    'hi'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ponder.models.fake import HashingEmbedder, ScriptedPolicy
from ponder.models.prm import PRM, aggregate_scores
from ponder.models.types import BasePolicy, Completion, Message, Policy, Prompt, SamplingParams, TokenUsage

if TYPE_CHECKING:
    from ponder.models.local import LocalPolicy
    from ponder.models.openai_policy import OpenAIPolicy

__all__ = [
    "PRM",
    "BasePolicy",
    "Completion",
    "HashingEmbedder",
    "LocalPolicy",
    "Message",
    "OpenAIPolicy",
    "Policy",
    "Prompt",
    "SamplingParams",
    "ScriptedPolicy",
    "TokenUsage",
    "aggregate_scores",
]

# Heavy backends import torch / openai: load them on first use only.
_LAZY = {"LocalPolicy": "ponder.models.local", "OpenAIPolicy": "ponder.models.openai_policy"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ponder.models' has no attribute {name!r}")
