"""``MemoryStore``: typed records in one Chroma collection (cosine space), embedded by a registered EF.

One store is one collection in an embedded ``chromadb.PersistentClient`` directory. The store embeds
documents and queries itself with its embedding function (so Chroma never falls back to its own
default, which downloads a model), and the function's ``{"name", "config"}`` is persisted with the
collection: ``MemoryStore.open(path)`` in a new process rebuilds it without being told.

One writer per directory: Chroma's embedded client is not made for several writing processes.

Example:
    >>> import tempfile
    >>> from ponder.memory import MemoryStore, Provenance, Reflection
    >>> with MemoryStore.open(tempfile.mkdtemp(), embedder="hashing") as store:
    ...     _ = store.add(Reflection("carry the one when adding", provenance=Provenance(task_id="t1")))
    ...     hit = store.search("adding numbers", kind="reflection", where={"task_id": "t1"})[0]
    ...     print(hit.record.text, hit.similarity > 0)
    carry the one when adding True
"""

from __future__ import annotations

import builtins
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ponder.errors import BackendError, ConfigError, DependencyNotInstalled
from ponder.memory.embeddings import (
    HashingEmbeddingFunction,
    embedder_dim,
    embedder_label,
    label_from_config,
    make_embedder,
)
from ponder.memory.records import (
    KINDS,
    Experience,
    Insight,
    Record,
    Reflection,
    record_from_chroma,
)
from ponder.memory.retrieval import Hit, build_where
from ponder.models.fake import HashingEmbedder

try:
    import chromadb
    from chromadb.config import Settings
    from chromadb.errors import ChromaError, NotFoundError
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise DependencyNotInstalled.for_extra("chromadb", "memory") from e

__all__ = ["MemoryStore"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SPACE = "cosine"
_RECORD_TYPES = (Reflection, Experience, Insight)
_INCLUDE = ["documents", "metadatas"]


@contextmanager
def _chroma_errors(what: str) -> Iterator[None]:
    try:
        yield
    except ChromaError as e:
        raise BackendError(
            f"Chroma failed to {what}: {e}; check the memory directory is intact and not in use"
        ) from e


class MemoryStore:
    """Typed memory over one Chroma collection; build it with ``MemoryStore.open``."""

    def __init__(self, client: Any, collection: Any, embedder: Any, *, path: Path | None = None):
        self._client = client
        self._collection = collection
        self._ef = embedder
        self.path = path
        self._closed = False

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        embedder: str | Any | None = None,
        collection: str = "ponder",
    ) -> MemoryStore:
        """Open (or create) the store in directory ``path``.

        Args:
            path: the Chroma directory; created if missing.
            embedder: ``"minilm"``, ``"hashing"``, or a Chroma ``EmbeddingFunction``. ``None`` (default)
                reuses the one the collection was created with, and ``"minilm"`` for a new collection.
            collection: the Chroma collection name (3-512 chars of ``[a-zA-Z0-9._-]``).

        Raises:
            ConfigError: the directory was created with a different embedder (or dimension), or the
                path is not a directory.

        Example:
            >>> import tempfile
            >>> MemoryStore.open(tempfile.mkdtemp(), embedder="hashing").stats()["total"]
            0
        """
        root = Path(path).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise ConfigError(f"memory path {root} is a file; pass a directory")
        root.mkdir(parents=True, exist_ok=True)
        wanted = _resolve_embedder(embedder)
        settings = Settings(anonymized_telemetry=False, allow_reset=False)
        try:
            client = chromadb.PersistentClient(path=str(root), settings=settings)
        except ValueError as e:  # another client in this process opened the path with other settings
            raise ConfigError(f"cannot open Chroma at {root}: {e}; close the other client first") from e
        try:
            col, ef = _open_collection(client, collection, wanted, root)
        except BaseException:
            client.close()
            raise
        return cls(client, col, ef, path=root)

    # ---------------------------------------------------------------- writing
    def add(self, record: Record) -> str:
        """Store one record (an existing id is overwritten) and return its id."""
        return self.add_many([record])[0]

    def add_many(self, records: Iterable[Record]) -> builtins.list[str]:
        """Store records in batches of the client's max batch size; return their ids in order.

        Writing the same id twice keeps the last version (upsert), so retries are idempotent.
        """
        records = builtins.list(records)
        for r in records:
            if not isinstance(r, _RECORD_TYPES):
                raise ConfigError(
                    f"MemoryStore stores Reflection, Experience or Insight records, not {type(r).__name__}"
                )
        unique = builtins.list({r.id: r for r in records}.values())  # last write of an id wins
        size = max(1, self._client.get_max_batch_size())
        col = self._col
        for start in range(0, len(unique), size):
            batch = unique[start : start + size]
            docs = [r.document() for r in batch]
            with _chroma_errors("add records"):
                col.upsert(
                    ids=[r.id for r in batch],
                    embeddings=self._ef(docs),
                    documents=docs,
                    metadatas=[r.to_metadata() for r in batch],
                )
        return [r.id for r in records]

    def delete(self, ids: str | Iterable[str]) -> None:
        """Delete records by id; unknown ids are ignored."""
        id_list = [ids] if isinstance(ids, str) else builtins.list(ids)
        size = max(1, self._client.get_max_batch_size())
        for start in range(0, len(id_list), size):  # never call delete(ids=[]): no ids, no call
            with _chroma_errors("delete records"):
                self._col.delete(ids=id_list[start : start + size])

    # ---------------------------------------------------------------- reading
    def get(self, id: str) -> Record | None:
        """The record with this id, or ``None``."""
        with _chroma_errors("get a record"):
            res = self._col.get(ids=[id], include=_INCLUDE)
        records = _records(res)
        return records[0] if records else None

    def list(
        self,
        kind: str | Iterable[str] | None = None,
        where: Mapping[str, Any] | None = None,
        limit: int | None = None,
    ) -> builtins.list[Record]:
        """Records matching ``kind`` and ``where`` (see ``build_where``), newest first by ``created_at``."""
        if limit is not None and limit < 0:
            raise ConfigError(f"limit must be >= 0, got {limit}")
        with _chroma_errors("list records"):
            res = self._col.get(where=build_where(where, kind), include=_INCLUDE)
        records = sorted(_records(res), key=lambda r: (r.provenance.created_at, r.id), reverse=True)
        return records if limit is None else records[:limit]

    def search(
        self,
        query: str,
        *,
        kind: str | Iterable[str] | None = None,
        k: int = 5,
        where: Mapping[str, Any] | None = None,
    ) -> builtins.list[Hit]:
        """The ``k`` records nearest to ``query`` (cosine), nearest first, filtered by ``kind`` and ``where``."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        filt = build_where(where, kind)
        col = self._col
        if col.count() == 0:
            return []
        vec = self._ef.embed_query([query]) if hasattr(self._ef, "embed_query") else self._ef([query])
        with _chroma_errors("search"):
            res = col.query(query_embeddings=vec, n_results=k, where=filt, include=[*_INCLUDE, "distances"])
        ids, docs, metas, dists = res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0]
        return [
            Hit(record_from_chroma(i, d, m), float(dist), 1.0 - float(dist))
            for i, d, m, dist in zip(ids, docs, metas, dists, strict=True)
        ]

    def count(self) -> int:
        """How many records the store holds."""
        with _chroma_errors("count records"):
            return int(self._col.count())

    def stats(self) -> dict[str, Any]:
        """``{"total", "by_kind": {kind: n}, "path", "collection", "embedder", "dim"}``."""
        col = self._col
        by_kind = {}
        with _chroma_errors("count records"):
            for kind in KINDS:
                by_kind[kind] = len(col.get(where={"kind": kind}, include=[])["ids"])
        return {
            "total": self.count(),
            "by_kind": by_kind,
            "path": str(self.path) if self.path else None,
            "collection": col.name,
            "embedder": embedder_label(self._ef),
            "dim": col.metadata.get("ponder_dim") if col.metadata else None,
        }

    def export(self, path: str | os.PathLike[str]) -> int:
        """Write every record as one JSON line (``record.to_dict()``), oldest first; return the count.

        The file is written to a temporary name and moved into place, so a crash leaves no half file.
        """
        records = self.list()[::-1]
        out = Path(path).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
        os.replace(tmp, out)
        return len(records)

    # ---------------------------------------------------------------- lifecycle
    @property
    def embedder(self) -> Any:
        """The embedding function the store uses (rebuilt from the collection's config when reopened)."""
        return self._ef

    @property
    def collection(self) -> Any:
        """The raw Chroma collection, for what the store does not wrap."""
        return self._col

    @property
    def _col(self) -> Any:
        if self._closed:
            raise BackendError(
                f"the memory store at {self.path} is closed; open it again with MemoryStore.open"
            )
        return self._collection

    def close(self) -> None:
        """Release the Chroma client (idempotent)."""
        if not self._closed:
            self._closed = True
            self._client.close()

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._collection.name!r}"
        return f"MemoryStore({str(self.path)!r}, {state}, embedder={embedder_label(self._ef)})"


def _resolve_embedder(embedder: Any) -> Any:
    if embedder is None or isinstance(embedder, str):
        return None if embedder is None else make_embedder(embedder)
    if isinstance(embedder, HashingEmbedder):
        return HashingEmbeddingFunction(dim=embedder.dim)
    if not all(callable(getattr(embedder, m, None)) for m in ("name", "get_config", "build_from_config")):
        raise ConfigError(
            f"embedder must be 'minilm', 'hashing' or a Chroma EmbeddingFunction with name/get_config/build_from_config, "
            f"not {type(embedder).__name__}"
        )
    return embedder


def _records(res: Mapping[str, Any]) -> builtins.list[Record]:
    return [
        record_from_chroma(i, d, m)
        for i, d, m in zip(res["ids"], res["documents"], res["metadatas"], strict=True)
    ]


def _open_collection(client: Any, name: str, wanted: Any, root: Path) -> tuple[Any, Any]:
    """Get or create the collection; return it with the embedding function to use."""
    try:
        col = client.get_collection(name, embedding_function=None)
    except NotFoundError:
        ef = wanted if wanted is not None else make_embedder("minilm")
        meta = {"ponder_schema": SCHEMA_VERSION, "ponder_embedder": ef.name(), "ponder_dim": embedder_dim(ef)}
        try:
            col = client.get_or_create_collection(
                name,
                configuration={"hnsw": {"space": _SPACE}, "embedding_function": ef},
                metadata=meta,
                embedding_function=None,
            )
        except (ChromaError, ValueError) as e:
            raise ConfigError(
                f"cannot create memory collection {name!r} in {root}: {e}; pick another name"
            ) from e
        log.info("created memory collection %r in %s with %s", name, root, embedder_label(ef))
    except (ChromaError, ValueError) as e:
        raise ConfigError(f"cannot open memory collection {name!r} in {root}: {e}; check the name") from e

    space = (col.configuration_json.get("hnsw") or {}).get("space", "l2")
    if space != _SPACE:
        raise ConfigError(
            f"collection {name!r} in {root} uses {space} distance; ponder memory needs cosine: use a new name"
        )
    persisted = col.configuration_json.get("embedding_function") or {}
    if persisted.get("type") != "known":
        raise ConfigError(
            f"collection {name!r} in {root} has no registered embedding function; it was not made by ponder: use a new name"
        )
    if wanted is None:
        try:
            return col, col.configuration.get("embedding_function")  # Chroma rebuilds it from the config
        except ValueError as e:
            raise ConfigError(
                f"collection {name!r} in {root} was made with embedder {persisted.get('name')!r}, unknown in this "
                "process; import the module that registers it, or pass embedder="
            ) from e
    stored_dim = (col.metadata or {}).get("ponder_dim") or getattr(
        getattr(col, "_model", None), "dimension", None
    )
    wanted_dim = embedder_dim(wanted)
    same = (wanted.name(), wanted.get_config()) == (persisted.get("name"), persisted.get("config"))
    if not same or (stored_dim is not None and stored_dim != wanted_dim):
        stored = label_from_config(persisted.get("name"), persisted.get("config"))
        raise ConfigError(
            f"memory at {root} was created with embedder {stored} (dim {stored_dim}) but {embedder_label(wanted)} "
            f"(dim {wanted_dim}) was passed; open it with embedder=None or use a new directory"
        )
    return col, wanted
