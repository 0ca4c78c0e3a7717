"""Policies (text generators), PRMs and embedders (``ponder.models``).

Example:
    >>> from ponder.models import Prompt, SamplingParams, ScriptedPolicy
    >>> ScriptedPolicy(["hi"]).generate([Prompt.user("hello")], SamplingParams())[0][0].text
    'hi'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ponder.models.fake import HashingEmbedder, ScriptedPolicy
from ponder.models.prm import PRM, BasePRM, FunctionPRM, PRMUsage, aggregate_scores
from ponder.models.types import BasePolicy, Completion, Message, Policy, Prompt, SamplingParams, TokenUsage

if TYPE_CHECKING:
    from ponder.models.local import LocalPolicy
    from ponder.models.openai_policy import OpenAIPolicy

__all__ = [
    "HFPRM",
    "PRM",
    "BasePRM",
    "BasePolicy",
    "Completion",
    "FunctionPRM",
    "HashingEmbedder",
    "LLMJudgePRM",
    "LocalPolicy",
    "Message",
    "OpenAIPolicy",
    "PRMUsage",
    "Policy",
    "Prompt",
    "RemotePRM",
    "SamplingParams",
    "ScriptedPolicy",
    "TokenUsage",
    "ValueHeadPRM",
    "VerifierPRM",
    "aggregate_scores",
]

# Heavy backends import torch / openai: load them on first use only.
_LAZY = {
    "LocalPolicy": "ponder.models.local",
    "OpenAIPolicy": "ponder.models.openai_policy",
    "HFPRM": "ponder.models.prm_hf",
    "ValueHeadPRM": "ponder.models.prm_value",
    "VerifierPRM": "ponder.models.prm_oracle",
    "LLMJudgePRM": "ponder.models.prm_oracle",
    "RemotePRM": "ponder.models.prm_remote",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ponder.models' has no attribute {name!r}")
