"""What agents learn, kept across episodes (``ponder.memory``): typed records in a Chroma store.

Records (``Reflection``, ``Experience``, ``Insight``) carry ``Provenance`` and need nothing but the
standard library. ``MemoryStore`` (Chroma) and the embedding functions load on first use, so
``from ponder.memory import Reflection`` works without the ``memory`` extra.

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
    {'reflection': 2, 'experience': 0, 'insight': 0}
    >>> store.close()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ponder.memory.records import (
    KINDS,
    Experience,
    Insight,
    Provenance,
    Record,
    Reflection,
    record_from_chroma,
    record_from_dict,
)
from ponder.memory.retrieval import Hit, build_where

if TYPE_CHECKING:
    from ponder.memory.embeddings import HashingEmbeddingFunction, MiniLMEmbeddingFunction, make_embedder
    from ponder.memory.store import MemoryStore

__all__ = [
    "KINDS",
    "Experience",
    "HashingEmbeddingFunction",
    "Hit",
    "Insight",
    "MemoryStore",
    "MiniLMEmbeddingFunction",
    "Provenance",
    "Record",
    "Reflection",
    "build_where",
    "make_embedder",
    "record_from_chroma",
    "record_from_dict",
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
