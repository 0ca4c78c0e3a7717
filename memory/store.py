"""``MemoryStore``: typed records in one Chroma collection (cosine space), embedded by a registered EF.

A store is one collection, either in an embedded ``chromadb.PersistentClient`` directory
(``MemoryStore.open(dir)``: per run, ``runs/NAME/memory``, or a shared directory) or on a Chroma
server (``MemoryStore.connect("http://127.0.0.1:8000")``, ``chroma run --path DIR``). The store embeds
documents and queries itself (so Chroma never falls back to its own default EF, which downloads a
model), and the EF's ``{"name", "config"}`` is persisted with the collection: a new process reopens
the store without being told the embedder.

Processes: a directory has one writer at a time (``mode="w"``, the default, holds the writer lock
of ``ponder.memory.lock`` for the store's lifetime) and any number of readers (``mode="r"``: no
writer lock, writes refused). A reader sees every committed record: ``get``/``list``/``count`` read
SQLite directly, while ``search`` uses Chroma's in-memory HNSW index, which a ``PersistentClient``
loads once and never reloads (measured with Chroma 1.5.9); so before a search a reader re-creates its
client when a ponder writer has committed since (the stamp in ``.ponder-io.lock``; the count where
no stamp was written yet). After writes by other tools, call ``refresh()``.
A server store needs none of this: the server serialises its clients.

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
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ponder.errors import ConfigError, DependencyNotInstalled
from ponder.memory.backend import (
    HttpConnector,
    PersistentConnector,
    check_ids,
    check_mode,
    open_store,
    resolve_embedder,
)
from ponder.memory.embeddings import embedder_label
from ponder.memory.io import clean_record, read_jsonl, write_jsonl
from ponder.memory.lock import IoLock, WriterLock
from ponder.memory.records import Design, Experience, Insight, Record, Reflection, record_from_chroma
from ponder.memory.retrieval import Hit, build_where
from ponder.memory.session import Session
from ponder.memory.stats import summarize

try:
    from chromadb.errors import ChromaError
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise DependencyNotInstalled.for_extra("chromadb", "memory") from e

__all__ = ["MemoryStore", "open_store"]

log = logging.getLogger(__name__)

_RECORD_TYPES = (Reflection, Experience, Insight, Design)
_INCLUDE = ["documents", "metadatas"]
_EMBED_CHARS = 4000  # MiniLM reads 256 word pieces; the stored document is never clipped


class MemoryStore:
    """Typed memory over one Chroma collection; build it with ``open``, ``connect`` or ``open_store``."""

    def __init__(self, session: Session, *, path: Path | None = None, url: str | None = None):
        self._session = session
        self._ef = session.connector.ef
        self.path, self.url, self.mode = path, url, session.mode

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        embedder: str | Any | None = None,
        collection: str = "ponder",
        mode: str = "w",
        lock_timeout: float = 30.0,
    ) -> MemoryStore:
        """Open (or, in mode ``"w"``, create) the store in directory ``path``.

        Args:
            path: the Chroma directory; created if missing (mode ``"w"``).
            embedder: ``"minilm"``, ``"hashing"``, or a Chroma ``EmbeddingFunction``. ``None`` (default)
                reuses the one the collection was created with, and ``"minilm"`` for a new collection.
            collection: the Chroma collection name (3-512 chars of ``[a-zA-Z0-9._-]``).
            mode: ``"w"`` takes the directory's writer lock for the store's lifetime; ``"r"`` takes
                none, refuses writes, and needs an existing store.
            lock_timeout: seconds to wait for another process's writer lock.

        Raises:
            ConfigError: another process writes the directory (after ``lock_timeout``), the directory
                was created with another embedder, the path is a file, or (mode ``"r"``) no store is there.

        Example:
            >>> import tempfile
            >>> MemoryStore.open(tempfile.mkdtemp(), embedder="hashing").stats()["total"]
            0
        """
        check_mode(mode)
        root = Path(path).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise ConfigError(f"memory path {root} is a file; pass a directory")
        if mode == "r" and not (root / "chroma.sqlite3").is_file():
            raise ConfigError(f"no memory at {root}; pass a store directory such as runs/NAME/memory")
        if mode == "r" and not _writable(root):
            return cls._open_copy(root, embedder, collection)
        if not _writable(root):
            raise ConfigError(
                f"memory {root} is not writable (a read-only file system, or no permission); "
                "copy it somewhere writable to change it (reading it works: mode='r')"
            )
        root.mkdir(parents=True, exist_ok=True)
        wanted = resolve_embedder(embedder)
        writer = WriterLock.acquire(root, lock_timeout) if mode == "w" else None
        io = IoLock(root)
        try:
            connector = PersistentConnector(root, collection, wanted, mode, io)
            return cls(Session(connector, mode=mode, where=str(root), writer=writer, io=io), path=root)
        except BaseException:
            io.close()
            if writer:
                writer.release()
            raise

    @classmethod
    def _open_copy(cls, root: Path, embedder: Any, collection: str) -> MemoryStore:
        """Read a store that cannot be written (a read-only disk): Chroma writes even to read, so
        it reads a temporary copy, removed on ``close``. Writes are refused as in any mode 'r'."""
        tmp = Path(tempfile.mkdtemp(prefix="ponder-memory-"))
        try:
            shutil.copytree(root, tmp / "store", ignore=shutil.ignore_patterns("*.lock"))
            store = cls.open(tmp / "store", embedder=embedder, collection=collection, mode="r")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("memory %s is not writable: reading a copy in %s", root, tmp)
        store.path, store._session.where = root, f"{root} (read-only: a copy)"
        store._session.on_close(lambda: shutil.rmtree(tmp, ignore_errors=True))
        return store

    @classmethod
    def connect(
        cls, url: str, *, embedder: str | Any | None = None, collection: str = "ponder", mode: str = "w"
    ) -> MemoryStore:
        """Use the collection on a Chroma server, e.g. one started with ``chroma run --path DIR --port 8000``.

        Args:
            url: ``http://HOST:PORT`` or ``https://HOST[:PORT]`` (port default 8000, 443 for https).
            embedder: as for ``open``.
            collection: the collection name.
            mode: ``"w"`` (default) or ``"r"`` (writes refused; the collection must exist). The server
                serialises its clients, so no lock is taken.

        Raises:
            BackendError: the server cannot be reached.
            ConfigError: the URL is malformed, or the collection does not fit (as for ``open``).

        Example:
            >>> MemoryStore.connect("http://127.0.0.1:1")  # doctest: +IGNORE_EXCEPTION_DETAIL
            Traceback (most recent call last):
            ponder.errors.BackendError: cannot reach the Chroma server at http://127.0.0.1:1 ...
        """
        check_mode(mode)
        connector = HttpConnector(url, collection, resolve_embedder(embedder), mode)
        return cls(Session(connector, mode=mode, where=url), url=url)

    # ---------------------------------------------------------------- writing
    def add(self, record: Record) -> str:
        """Store one record (an existing id is overwritten) and return its id."""
        return self.add_many([record])[0]

    def add_many(self, records: Iterable[Record]) -> builtins.list[str]:
        """Store records in batches of the client's max batch size; return their ids in order.

        Writing the same id twice keeps the last version (upsert), so retries are idempotent. Text
        that is not valid UTF-8 is stored with the bad bytes replaced (``ponder.memory.io``); only
        the first ``4000`` characters of a document are embedded, the whole of it is stored.

        Example:
            >>> import tempfile
            >>> from ponder.memory import Reflection
            >>> with MemoryStore.open(tempfile.mkdtemp(), embedder="hashing") as s:
            ...     s.add_many([Reflection("a", id="x"), Reflection("b", id="x")])
            ['x', 'x']
        """
        self._writable("add records")
        records = builtins.list(records)
        for r in records:
            if not isinstance(r, _RECORD_TYPES):
                raise ConfigError(
                    f"MemoryStore stores Reflection, Experience, Insight or Design records, not {type(r).__name__}"
                )
        unique = builtins.list({r.id: clean_record(r) for r in records}.values())  # last write wins
        size = self._session.batch_size()
        for start in range(0, len(unique), size):
            batch = unique[start : start + size]
            docs = [r.document() for r in batch]
            vectors = self._ef([d[:_EMBED_CHARS] for d in docs])  # embed outside the lock
            with self._session.call("add records"):
                self._session.col.upsert(
                    ids=[r.id for r in batch],
                    embeddings=vectors,
                    documents=docs,
                    metadatas=[r.to_metadata() for r in batch],
                )
                self._session.committed()
        return [r.id for r in records]

    def delete(self, ids: str | Iterable[str]) -> None:
        """Delete records by id; unknown ids are ignored."""
        self._writable("delete records")
        self._session.delete(check_ids([ids] if isinstance(ids, str) else ids))

    def delete_where(self, where: Mapping[str, Any] | None = None, kind: str | None = None) -> int:
        """Delete the records matching ``where`` and ``kind`` (at least one); return how many.

        Example:
            >>> import tempfile
            >>> from ponder.memory import Provenance, Reflection
            >>> with MemoryStore.open(tempfile.mkdtemp(), embedder="hashing") as s:
            ...     _ = s.add(Reflection("a", provenance=Provenance(run_id="r1")))
            ...     s.delete_where({"run_id": "r1"}), s.count()
            (1, 0)
        """
        self._writable("delete records")
        filt = build_where(where, kind)
        if filt is None:
            raise ConfigError(
                "delete_where needs a filter (where= or kind=); use clear() to delete everything"
            )
        with self._session.call("delete records"):
            ids = self._session.fetch(filt, [])[0]
            self._session.delete(ids)
        return len(ids)

    def clear(self) -> int:
        """Delete every record (the collection and its embedder stay); return how many."""
        self._writable("clear the memory")
        with self._session.call("clear the memory"):
            ids = self._session.fetch(None, [])[0]
            self._session.delete(ids)
        return len(ids)

    def import_jsonl(self, path: str | os.PathLike[str], *, trust: bool = False) -> int:
        """Add every record of a file written by ``export`` (ids, provenance, times kept); return the count.

        The whole file is validated before anything is stored. Records whose id is already in the
        store are overwritten. Vectors are recomputed with this store's embedder.

        Args:
            path: the JSONL file.
            trust: keep the file's ``trusted`` flags. By default every imported record is stored
                untrusted: anyone can write ``"trusted": true, "source": "user"`` into a file, and a
                trusted record reaches a prompt unquoted (an insight) or as a worked example (an
                experience). Pass ``trust=True`` (``ponder memory import --trust``) only for a file
                you vouch for.
        """
        self._writable("import records")
        records = read_jsonl(path)
        if not trust:
            for r in records:
                r.provenance = dataclasses.replace(r.provenance, trusted=False)
        self.add_many(records)
        return len(records)

    # ---------------------------------------------------------------- reading
    def get(self, id: str) -> Record | None:
        """The record with this id, or ``None``."""
        found = self.get_many([id])
        return found[0] if found else None

    def get_many(self, ids: Iterable[str]) -> builtins.list[Record]:
        """The records with these ids, in the order asked (unknown ids left out, repeats once)."""
        wanted = builtins.list(dict.fromkeys(check_ids(ids)))
        found: dict[str, Record] = {}
        size = self._session.batch_size()
        with self._session.call("get records"):
            for start in range(0, len(wanted), size):
                res = self._session.col.get(ids=wanted[start : start + size], include=_INCLUDE)
                found.update((r.id, r) for r in _records(res))
        return [found[i] for i in wanted if i in found]

    def list(
        self,
        kind: str | Iterable[str] | None = None,
        where: Mapping[str, Any] | None = None,
        limit: int | None = None,
    ) -> builtins.list[Record]:
        """Records matching ``kind`` and ``where`` (see ``build_where``), newest first by ``created_at``.

        ``where`` names metadata keys, e.g. ``{"env": "math", "task_id": "math/L1/3", "outcome":
        "success", "run_id": "demo"}``.
        """
        if limit is not None and limit < 0:
            raise ConfigError(f"limit must be >= 0, got {limit}")
        with self._session.call("list records"):
            records = _records(self._session.fetch(build_where(where, kind), _INCLUDE))
        records.sort(key=lambda r: (r.provenance.created_at, r.id), reverse=True)
        return records if limit is None else records[:limit]

    def search(
        self,
        query: str,
        *,
        kind: str | Iterable[str] | None = None,
        k: int = 5,
        where: Mapping[str, Any] | None = None,
        with_embeddings: bool = False,
    ) -> builtins.list[Hit]:
        """The ``k`` records nearest to ``query`` (cosine), nearest first, filtered by ``kind`` and ``where``.

        Args:
            query: the text to look for (not empty; only its first 4000 characters are embedded).
            kind: record kind(s).
            k: how many hits at most.
            where: metadata filters, see ``build_where``.
            with_embeddings: fill each ``Hit.embedding`` with the record's vector (for MMR).

        Raises:
            ConfigError: the query is empty or ``k < 1``.
        """
        if isinstance(query, bytes):
            query = query.decode("utf-8", "replace")
        if not isinstance(query, str) or not query.strip():
            raise ConfigError("search needs a query text, got an empty one; pass the words to look for")
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        filt = build_where(where, kind)
        query = query.encode("utf-16", "surrogatepass").decode("utf-16", "replace")[:_EMBED_CHARS]
        embed = getattr(self._ef, "embed_query", None)
        vec = embed([query]) if callable(embed) else self._ef([query])
        include = [*_INCLUDE, "distances", *(["embeddings"] if with_embeddings else [])]
        session = self._session
        with session.call("search"):
            fresh = session.refresh_if_stale()
            try:
                res = session.col.query(query_embeddings=vec, n_results=k, where=filt, include=include)
            except ChromaError:
                if self.mode != "r" or session.io is None or fresh:
                    raise
                session.reopen()  # a reader's cached index can predate the writer's files: load it anew
                res = session.col.query(query_embeddings=vec, n_results=k, where=filt, include=include)
        vecs = res["embeddings"][0] if with_embeddings else [None] * len(res["ids"][0])
        rows = zip(
            res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0], vecs, strict=True
        )
        return [
            Hit(
                record_from_chroma(i, d, m),
                float(x),
                1.0 - float(x),
                None if v is None else tuple(map(float, v)),
            )
            for i, d, m, x, v in rows
        ]

    def count(self) -> int:
        """How many records the store holds."""
        with self._session.call("count records"):
            return int(self._session.col.count())

    def stats(self) -> dict[str, Any]:
        """Counts and settings, e.g. for ``ponder memory stats``.

        Returns:
            ``{"total", "by_kind", "by_env", "by_outcome" (experiences), "insights": {"active",
            "retired", "top": [{"id", "text", "net", "upvotes", "downvotes"}, ...]}, "path", "url",
            "collection", "mode", "embedder", "dim"}``; ``by_env`` counts records without an env under ``""``.
        """
        with self._session.call("count records"):
            metas = self._session.fetch(None, ["metadatas"])[2]
            insights = _records(self._session.fetch({"kind": "insight"}, _INCLUDE))
            col = self._session.col
        return {
            **summarize(metas, insights),  # type: ignore[arg-type]
            "path": str(self.path) if self.path else None,
            "url": self.url,
            "collection": col.name,
            "mode": self.mode,
            "embedder": embedder_label(self._ef),
            "dim": (col.metadata or {}).get("ponder_dim"),
        }

    def export(self, path: str | os.PathLike[str]) -> int:
        """Write every record as one JSON line (``record.to_dict()``), oldest first; return the count.

        The file is written to a temporary name and moved into place, so a crash leaves no half
        file; ``import_jsonl`` reads it back exactly.
        """
        return write_jsonl(self.list()[::-1], path)

    # ---------------------------------------------------------------- lifecycle
    def refresh(self) -> None:
        """Re-create the Chroma client so a reader's search sees what other processes committed.

        ``search`` does this by itself in mode ``"r"`` when the writer has committed since; call it
        when another tool wrote the directory.
        """
        with self._session.call("reopen the memory"):
            self._session.reopen()

    @property
    def embedder(self) -> Any:
        """The embedding function the store uses (rebuilt from the collection's config when reopened)."""
        return self._ef

    @property
    def collection(self) -> Any:
        """The raw Chroma collection, for what the store does not wrap (no lock is taken for you)."""
        return self._session.col

    @property
    def _client(self) -> Any:
        return self._session.client

    def close(self) -> None:
        """Release the Chroma client and the locks (idempotent)."""
        self._session.close()

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._session.closed else repr(self._session.collection.name)
        return f"MemoryStore({self._session.where!r}, {state}, mode={self.mode!r}, embedder={embedder_label(self._ef)})"

    def _writable(self, what: str) -> None:
        if self.mode != "w":
            raise ConfigError(
                f"cannot {what}: memory {self._session.where} is open read-only (mode='r'); open it with mode='w'"
            )


if TYPE_CHECKING:
    from ponder.memory.protocol import Memory

    def _is_a_memory(store: MemoryStore) -> Memory:
        """Never called: the type checker proves here that a ``MemoryStore`` is a ``Memory``."""
        return store


def _writable(root: Path) -> bool:
    """Whether ``root`` (or, if missing, its nearest existing parent) can be written: ``access``
    also says no on a read-only file system, even to root."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    files = [probe, *(p for p in (probe / "chroma.sqlite3",) if p.exists())]
    return all(os.access(p, os.W_OK) for p in files)


def _records(res: Mapping[str, Any] | tuple[Any, Any, Any]) -> builtins.list[Record]:
    """Records from a Chroma get result, or from ``(ids, documents, metadatas)``."""
    ids, docs, metas = (res["ids"], res["documents"], res["metadatas"]) if isinstance(res, Mapping) else res
    return [record_from_chroma(i, d, m) for i, d, m in zip(ids, docs, metas, strict=True)]
