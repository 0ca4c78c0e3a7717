"""Retrieval pieces shared by stores: the ``Hit`` a search returns and ``build_where`` for filters.

Example:
    >>> from ponder.memory.retrieval import build_where
    >>> build_where({"task_id": "math/L1/3"}, kind="reflection")
    {'$and': [{'kind': 'reflection'}, {'task_id': 'math/L1/3'}]}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ponder.errors import ConfigError
from ponder.memory.records import KINDS, METADATA_KEYS, Record

__all__ = ["Hit", "build_where"]


@dataclass(frozen=True)
class Hit:
    """One search result: the record, its cosine distance to the query and ``similarity = 1 - distance``.

    ``embedding`` is the record's vector when the search asked for it (MMR needs it).
    """

    record: Record
    distance: float
    similarity: float
    embedding: tuple[float, ...] | None = None


def build_where(
    where: Mapping[str, Any] | None = None, kind: str | Iterable[str] | None = None
) -> dict | None:
    """Turn simple keyword filters into Chroma's ``where`` syntax.

    Each ``key: value`` is one condition, all combined with ``$and``: a scalar means equality, a list
    means ``$in``, a dict is a Chroma operator expression passed as is (``{"score": {"$gte": 0.5}}``).
    ``$and`` / ``$or`` keys are passed through. Unknown keys are refused, so a typo fails loudly.

    Example:
        >>> build_where({"task_id": "math/L1/3", "trusted": True}, kind="reflection")
        {'$and': [{'kind': 'reflection'}, {'task_id': 'math/L1/3'}, {'trusted': True}]}
        >>> build_where({"env": ["math", "humaneval"]})
        {'env': {'$in': ['math', 'humaneval']}}
    """
    clauses: list[dict[str, Any]] = []
    if kind is not None:
        kinds = [kind] if isinstance(kind, str) else list(kind)
        for k in kinds:
            if k not in KINDS:
                raise ConfigError(f"unknown memory kind {k!r}; choose one of: {', '.join(KINDS)}")
        clauses.append({"kind": kinds[0]} if len(kinds) == 1 else {"kind": {"$in": kinds}})
    for key, value in (where or {}).items():
        if key in ("$and", "$or"):
            clauses.append({key: value})
        elif key not in METADATA_KEYS:
            raise ConfigError(
                f"unknown memory filter key {key!r}; choose one of: {', '.join(sorted(METADATA_KEYS))}"
            )
        elif isinstance(value, (dict, str, int, float)):  # bool is an int
            clauses.append({key: value})
        elif isinstance(value, (list, tuple, set, frozenset)):
            clauses.append({key: {"$in": list(value)}})
        else:
            raise ConfigError(
                f"memory filter {key}={value!r} must be a str, number, bool, list or operator dict"
            )
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}
