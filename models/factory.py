"""Build a policy by kind name (``local``, ``openai``, ``scripted``), as the CLI and runner do.

Example:
    >>> from ponder.models.factory import make_policy
    >>> make_policy("scripted", script=["Answer: 4"]).name
    'scripted'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ponder.errors import ConfigError, UnknownName
from ponder.models.prm import PRM
from ponder.models.types import BasePolicy

__all__ = ["POLICY_KINDS", "PRM_NAMES", "check_prm_spec", "make_policy", "make_prm"]

#: PRMs named rather than loaded from a folder
PRM_NAMES = ("verifier", "judge", "none")

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


def make_prm(
    spec: str | None, *, policy: Any = None, device: str = "auto", dtype: str = "auto"
) -> PRM | None:
    """The PRM a run asks for: None, ``"verifier"`` (a ``TaskVerifierPRM``: the env's verifier, an
    oracle, that the search actor binds to each task), ``"judge"`` (``LLMJudgePRM`` on ``policy``), a
    URL (``RemotePRM``: ``ponder serve --prm``'s ``/v1/prm/score``) or a folder (``HFPRM``, any
    supported format).

    A ponder value-head PRM whose backbone is the local policy's model shares its weights.

    Example:
        >>> make_prm("verifier")
        TaskVerifierPRM(separator='\\n\\n', neutral=0.5, cache_size=4096)
        >>> make_prm("none") is None
        True
    """
    if spec is None or spec == "none":
        return None
    if spec == "verifier":
        from ponder.models.prm_oracle import VerifierPRM

        return VerifierPRM.per_task()
    if spec == "judge":
        from ponder.models.prm_oracle import LLMJudgePRM

        return LLMJudgePRM(policy)
    if spec.startswith(("http://", "https://")):  # a PRM served by `ponder serve --prm`
        from ponder.models.prm_remote import RemotePRM

        return RemotePRM(spec)
    path = _prm_folder(spec)
    if (path / "ponder_prm.json").is_file():
        from ponder.models.prm_value import ValueHeadPRM

        return ValueHeadPRM.load(path, device=device, dtype=dtype, backbone=_shared_backbone(path, policy))
    from ponder.models.prm_hf import HFPRM

    return HFPRM(path, device=device, dtype=dtype)


def check_prm_spec(spec: str) -> Path | None:
    """The folder a PRM spec names (None for a PRM name or URL); a ConfigError if it is neither."""
    if spec in PRM_NAMES or spec.startswith(("http://", "https://")):
        return None
    return _prm_folder(spec)


def _prm_folder(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(
            f"PRM {spec!r} is neither a folder nor one of {', '.join(PRM_NAMES)}; "
            "train one with 'ponder prm train' or pass --prm verifier"
        )
    return path


def _shared_backbone(path: Path, policy: Any) -> Any:
    """``policy`` when it is a LocalPolicy on the PRM's backbone (so the weights load once)."""
    import json

    meta = json.loads((path / "ponder_prm.json").read_text())
    own = getattr(policy, "path", None)
    if own is None or not hasattr(policy, "model"):
        return None
    backbone = meta.get("backbone")
    from ponder.models.resolver import resolve_model

    try:
        wanted = resolve_model(None if backbone in (None, "default") else backbone)
    except Exception:
        return None
    return policy if Path(wanted).resolve() == Path(own).resolve() else None
