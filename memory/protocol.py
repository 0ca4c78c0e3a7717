"""The memory seam: what agents, their memory nodes and the insight books ask of a store.

Agents take ``memory: Memory | None``. ``MemoryStore`` (Chroma) is the store ponder ships; any
object with these methods works in its place (the type check proves ``MemoryStore`` is one:
``ponder.memory.store`` returns one as a ``Memory``). ``where`` filters name record metadata keys
(``{"task_id": ..., "outcome": "success"}``; a list means "any of"; a dict is an operator such as
``{"$ne": x}``, see ``ponder.memory.retrieval.build_where``).

Example:
    A memory kept in a dict, searched by the cosine of hashed word vectors (operator filters left
    out for brevity), is enough for the Reflexion agent:

    >>> from ponder.agents import AgentContext, build_reflexion
    >>> from ponder.environments import make
    >>> from ponder.memory import Hit, Memory
    >>> from ponder.models import HashingEmbedder, ScriptedPolicy
    >>> class DictMemory:
    ...     def __init__(self):
    ...         self.records, self.embedder = {}, HashingEmbedder()
    ...     def add(self, record):
    ...         self.records[record.id] = record
    ...         return record.id
    ...     def add_many(self, records):
    ...         return [self.add(r) for r in records]
    ...     def get(self, id):
    ...         return self.records.get(id)
    ...     def get_many(self, ids):
    ...         return [self.records[i] for i in dict.fromkeys(ids) if i in self.records]
    ...     def list(self, kind=None, where=None, limit=None):
    ...         kinds = {kind} if isinstance(kind, str) else set(kind or ())
    ...         def match(r):
    ...             meta = r.to_metadata()
    ...             return (not kinds or r.kind in kinds) and all(
    ...                 meta.get(k) in (v if isinstance(v, list) else [v]) for k, v in (where or {}).items())
    ...         found = [r for r in self.records.values() if match(r)]
    ...         found.sort(key=lambda r: r.provenance.created_at, reverse=True)
    ...         return found[:limit]
    ...     def search(self, query, *, kind=None, k=5, where=None):
    ...         q, hits = self.embedder([query])[0], []
    ...         for r in self.list(kind, where):
    ...             sim = sum(a * b for a, b in zip(q, self.embedder([r.document()])[0]))
    ...             hits.append(Hit(r, 1.0 - sim, sim))
    ...         return sorted(hits, key=lambda h: -h.similarity)[:k]
    >>> memory = DictMemory()
    >>> isinstance(memory, Memory)
    True
    >>> env = make("math", level=1, num_tasks=1, seed=0)          # What is 9 + 4?
    >>> policy = ScriptedPolicy({"Diagnose": "I added wrong.", "": "Answer: 12"})
    >>> graph = build_reflexion(policy, memory=memory, max_trials=2)
    >>> _ = graph.invoke({"task_id": "math/L1/0"}, context=AgentContext(env=env))
    >>> [r.text for r in memory.list(kind="reflection", where={"task_id": "math/L1/0"})]
    ['I added wrong.']
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from ponder.memory.records import Record
from ponder.memory.retrieval import Hit

__all__ = ["Memory"]


@runtime_checkable
class Memory(Protocol):
    """Typed records that agents write, list and search (``MemoryStore`` is one).

    ``isinstance(x, Memory)`` checks only that the methods are there, not their signatures.
    """

    @property
    def embedder(self) -> Callable[[builtins.list[str]], Any]:
        """Texts -> vectors, the function ``search`` embeds with (the embodied agent grounds actions
        with it); may carry ``related_similarity``, the cosine above which two texts are related."""
        ...

    def add(self, record: Record) -> str:
        """Store one record (an existing id is overwritten); returns its id."""
        ...

    def add_many(self, records: Iterable[Record]) -> builtins.list[str]:
        """Store records (an existing id is overwritten); returns their ids in order."""
        ...

    def get(self, id: str) -> Record | None:
        """The record with this id, or None."""
        ...

    def get_many(self, ids: Iterable[str]) -> builtins.list[Record]:
        """The records with these ids, in the order asked (unknown ids left out)."""
        ...

    def list(
        self,
        kind: str | Iterable[str] | None = None,
        where: Mapping[str, Any] | None = None,
        limit: int | None = None,
    ) -> builtins.list[Record]:
        """Records of ``kind`` matching ``where``, newest first, ``limit`` at most."""
        ...

    def search(
        self,
        query: str,
        *,
        kind: str | Iterable[str] | None = None,
        k: int = 5,
        where: Mapping[str, Any] | None = None,
    ) -> builtins.list[Hit]:
        """The ``k`` records nearest to ``query``, nearest first, filtered like ``list``."""
        ...
