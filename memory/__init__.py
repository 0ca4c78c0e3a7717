"""What agents learn, kept across episodes (``ponder.memory``): typed records in a Chroma store.

Records (``Reflection``, ``Experience``, ``Insight``) carry ``Provenance`` and need nothing but the
standard library. ``MemoryStore`` (Chroma) and the embedding functions load on first use, so
``from ponder.memory import Reflection`` works without the ``memory`` extra. Agents depend on the
``Memory`` protocol (``ponder.memory.protocol``), which ``MemoryStore`` satisfies.

Example:
    >>> import tempfile
    >>> from ponder.memory import MemoryStore, Provenance, Reflection
    >>> store = MemoryStore.open(tempfile.mkdtemp(), embedder="hashing")  # default: "minilm"
    >>> _ = store.add(Reflection("Carry the 1 when a column sums past 9.",
    ...                          provenance=Provenance(env="math", task_id="math/L1/3")))
    >>> _ = store.add(Reflection("Mix the paint before you start.", provenance=Provenance(env="art")))
    >>> [h.record.text for h in store.search("carry when adding a column", k=1)]
    ['Carry the 1 when a column sums past 9.']
    >>> [r.text for r in store.list(kind="reflection", where={"env": "art"})]
    ['Mix the paint before you start.']
    >>> store.stats()["by_kind"]
    {'reflection': 2, 'experience': 0, 'insight': 0, 'design': 0}
    >>> store.close()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ponder.memory.insights import InsightBook, Operation, comparison_prompt, parse_operations
from ponder.memory.protocol import Memory
from ponder.memory.records import (
    KINDS,
    Design,
    Experience,
    Insight,
    Provenance,
    Record,
    Reflection,
    record_from_chroma,
    record_from_dict,
)
from ponder.memory.retrieval import Hit, build_where, mmr, quote, render_for_prompt, retrieve

if TYPE_CHECKING:
    from ponder.memory.embeddings import HashingEmbeddingFunction, MiniLMEmbeddingFunction, make_embedder
    from ponder.memory.store import MemoryStore

__all__ = [
    "KINDS",
    "Design",
    "Experience",
    "HashingEmbeddingFunction",
    "Hit",
    "Insight",
    "InsightBook",
    "Memory",
    "MemoryStore",
    "MiniLMEmbeddingFunction",
    "Operation",
    "Provenance",
    "Record",
    "Reflection",
    "build_where",
    "comparison_prompt",
    "make_embedder",
    "mmr",
    "parse_operations",
    "quote",
    "record_from_chroma",
    "record_from_dict",
    "render_for_prompt",
    "retrieve",
]

# chromadb and sentence-transformers are the optional ``memory`` extra: load them on first use only.
_LAZY = {
    "HashingEmbeddingFunction": "ponder.memory.embeddings",
    "MiniLMEmbeddingFunction": "ponder.memory.embeddings",
    "make_embedder": "ponder.memory.embeddings",
    "MemoryStore": "ponder.memory.store",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ponder.memory' has no attribute {name!r}")
