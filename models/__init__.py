"""Policies (text generators), PRMs and embedders (``ponder.models``).

Example:
    >>> from ponder.models import Prompt, SamplingParams, ScriptedPolicy
    >>> ScriptedPolicy(["hi"]).generate([Prompt.user("hello")], SamplingParams())[0][0].text
    'hi'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ponder.models.check import ensure_policy
from ponder.models.fake import HashingEmbedder, ScriptedPolicy
from ponder.models.prm import PRM, BasePRM, FunctionPRM, PRMUsage, aggregate_scores
from ponder.models.types import (
    BasePolicy,
    Completion,
    Message,
    Policy,
    Prompt,
    SamplingParams,
    StreamingPolicy,
    TokenUsage,
)

if TYPE_CHECKING:
    from ponder.models.langchain_policy import LangChainPolicy
    from ponder.models.local import LocalPolicy
    from ponder.models.openai_policy import OpenAIPolicy
    from ponder.models.prm_hf import HFPRM
    from ponder.models.prm_oracle import LLMJudgePRM, TaskVerifierPRM, VerifierPRM
    from ponder.models.prm_remote import RemotePRM
    from ponder.models.prm_value import ValueHeadPRM

__all__ = [
    "HFPRM",
    "PRM",
    "BasePRM",
    "BasePolicy",
    "Completion",
    "FunctionPRM",
    "HashingEmbedder",
    "LLMJudgePRM",
    "LangChainPolicy",
    "LocalPolicy",
    "Message",
    "OpenAIPolicy",
    "PRMUsage",
    "Policy",
    "Prompt",
    "RemotePRM",
    "SamplingParams",
    "ScriptedPolicy",
    "StreamingPolicy",
    "TaskVerifierPRM",
    "TokenUsage",
    "ValueHeadPRM",
    "VerifierPRM",
    "aggregate_scores",
    "ensure_policy",
]

# Heavy backends import torch / openai: load them on first use only.
_LAZY = {
    "LocalPolicy": "ponder.models.local",
    "OpenAIPolicy": "ponder.models.openai_policy",
    "HFPRM": "ponder.models.prm_hf",
    "ValueHeadPRM": "ponder.models.prm_value",
    "VerifierPRM": "ponder.models.prm_oracle",
    "TaskVerifierPRM": "ponder.models.prm_oracle",
    "LangChainPolicy": "ponder.models.langchain_policy",
    "LLMJudgePRM": "ponder.models.prm_oracle",
    "RemotePRM": "ponder.models.prm_remote",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ponder.models' has no attribute {name!r}")
