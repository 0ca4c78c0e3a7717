"""Summaries of a store's contents: counts by kind, env and outcome, and insights ranked by votes.

Example:
    >>> from ponder.memory.records import Insight
    >>> a, b = Insight("check units", upvotes=5, id="a"), Insight("guess", upvotes=2, downvotes=1, id="b")
    >>> [i.id for i in rank_insights([b, a])]
    ['a', 'b']
    >>> summarize([{"kind": "insight", "env": "math"}] * 2, [a, b])["insights"]["top"][0]["net"]
    5
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from ponder.memory.records import KINDS, Insight

__all__ = ["rank_insights", "summarize"]


def rank_insights(insights: Iterable[Insight], *, include_retired: bool = False) -> list[Insight]:
    """Active insights (and retired ones after them, if asked) by net votes, then up-votes, then age."""
    chosen = [i for i in insights if include_retired or i.status == "active"]
    return sorted(
        chosen, key=lambda i: (i.status != "active", -i.net, -i.upvotes, i.provenance.created_at, i.id)
    )


def summarize(
    metadatas: Iterable[Mapping[str, Any]], insights: Iterable[Insight], top: int = 10
) -> dict[str, Any]:
    """Counts from every record's Chroma metadata, plus the insights' vote summary.

    Returns:
        ``{"total", "by_kind", "by_env", "by_outcome", "insights": {"active", "retired", "top"}}``;
        ``by_env`` counts records without an env under ``""``; ``by_outcome`` counts experiences;
        ``top`` lists up to ``top`` active insights as ``{"id", "text", "net", "upvotes", "downvotes"}``.
    """
    metas = list(metadatas)
    insights = list(insights)
    by_kind = dict.fromkeys(KINDS, 0) | Counter(str(m.get("kind", "")) for m in metas)
    by_env = Counter(str(m.get("env", "")) for m in metas)
    outcomes = Counter(str(m.get("outcome")) for m in metas if m.get("kind") == "experience")
    active = rank_insights(insights)
    return {
        "total": len(metas),
        "by_kind": by_kind,
        "by_env": dict(sorted(by_env.items())),
        "by_outcome": {"success": 0, "failure": 0} | outcomes,
        "insights": {
            "active": len(active),
            "retired": len(insights) - len(active),
            "top": [
                {"id": i.id, "text": i.text, "net": i.net, "upvotes": i.upvotes, "downvotes": i.downvotes}
                for i in active[:top]
            ],
        },
    }
