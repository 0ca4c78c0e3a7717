"""A store's live Chroma connection: client and collection, locks, batches, and a reader's refresh.

``MemoryStore`` keeps typed records; this keeps the connection under them. Every Chroma call runs in
``session.call(what)``: under the directory's ``IoLock`` (embedded stores) with Chroma and HTTP errors
turned into one-line ``BackendError`` s. After each commit the writer rewrites the lock's stamp; a
reader (``mode="r"``) compares it before a search and re-creates its client when it moved, because an
embedded ``PersistentClient`` loads a collection's HNSW index once and never sees other processes'
additions in it (``get``/``count`` read SQLite and are always current).

Example:
    >>> import tempfile
    >>> from ponder.memory import MemoryStore
    >>> store = MemoryStore.open(tempfile.mkdtemp(), embedder="hashing")
    >>> with store._session.call("count records"):
    ...     store._session.col.count()
    0
    >>> store.close()
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ponder.errors import BackendError, DependencyNotInstalled
from ponder.memory.lock import IoLock, WriterLock

try:
    import httpx
    from chromadb.errors import ChromaError
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise DependencyNotInstalled.for_extra("chromadb", "memory") from e

__all__ = ["Session", "chroma_errors"]

log = logging.getLogger(__name__)


@contextmanager
def chroma_errors(what: str, where: str | None = None) -> Iterator[None]:
    """Turn Chroma's and the HTTP client's errors into a ``BackendError`` naming ``what`` failed.

    Chroma reports a full disk in many words ("Error in compaction: Failed to apply logs ..."),
    so when the store's directory ``where`` has (almost) no space left, the message says so.
    """
    try:
        yield
    except ChromaError as e:
        if where and _nearly_full(where):
            raise BackendError(f"Chroma failed to {what}: the disk is full ({e})") from e
        raise BackendError(
            f"Chroma failed to {what}: {e}; check the memory directory is intact and not in use"
        ) from e
    except httpx.HTTPError as e:
        raise BackendError(f"Chroma server failed to {what}: {e}; check the server is running") from e


def _nearly_full(where: str, margin: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(where).free < margin
    except OSError:  # a URL, or a directory already gone
        return False


class Session:
    """The client and collection of one store, opened by ``connector()`` (again on ``reopen``).

    Args:
        connector: ``() -> (client, collection)``, with the embedding function in use as ``.ef``.
        mode: ``"r"`` or ``"w"``.
        where: the directory or URL, for messages.
        writer: the writer lock held for the session's lifetime (embedded, mode ``"w"``).
        io: the directory's per-call lock (embedded stores only).
    """

    def __init__(
        self,
        connector: Any,
        *,
        mode: str,
        where: str,
        writer: WriterLock | None = None,
        io: IoLock | None = None,
    ):
        self.connector, self.mode, self.where, self.writer, self.io = connector, mode, where, writer, io
        self.closed = False
        self._on_close: list[Any] = []
        self.client, self.collection = connector()
        self.seen = self.signature()

    @property
    def col(self) -> Any:
        """The collection; ``BackendError`` once closed."""
        if self.closed:
            raise BackendError(f"the memory store at {self.where} is closed; open it again")
        return self.collection

    @contextmanager
    def call(self, what: str) -> Iterator[None]:
        """Hold the directory's lock and translate errors around Chroma calls (re-entrant)."""
        self.col  # noqa: B018 - raises when closed
        with self.io or contextlib.nullcontext(), chroma_errors(what, self.where if self.io else None):
            yield

    def batch_size(self) -> int:
        """The client's max batch size (the server's, for an HTTP client)."""
        return max(1, int(self.client.get_max_batch_size()))

    def committed(self) -> None:
        """Record a commit in the stamp readers compare (call inside ``call``)."""
        if self.io is not None:
            self.io.write_stamp(f"{time.time_ns()} {os.getpid()}")

    def signature(self) -> str | int | None:
        """What tells a reader the writer committed: the writer's stamp, or (no stamp yet) the count."""
        if self.mode != "r" or self.io is None:
            return None
        with self.io, chroma_errors("count records"):
            return self.io.read_stamp() or int(self.collection.count())

    def refresh_if_stale(self) -> bool:
        """Reopen a reader whose writer committed since it last loaded; return whether it did."""
        if self.mode == "r" and self.io is not None and self.signature() != self.seen:
            self.reopen()
            return True
        return False

    def reopen(self) -> None:
        """Re-create the client (call inside ``call``)."""
        self.client.close()  # the last client of a directory in a process stops Chroma's system
        self.client, self.collection = self.connector()
        self.seen = self.signature()
        log.debug("memory %s reopened to see other processes' commits", self.where)

    def delete(self, ids: list[str]) -> None:
        """Delete ids in batches (none: no call, never "delete everything")."""
        size = self.batch_size()
        for start in range(0, len(ids), size):
            with self.call("delete records"):
                self.col.delete(ids=ids[start : start + size])
                self.committed()

    def fetch(
        self, where: Mapping[str, Any] | None, include: list[str]
    ) -> tuple[list[str], list[Any], list[Any]]:
        """All matching ids, documents and metadatas, in pages of the batch size (call inside ``call``)."""
        ids: list[str] = []
        docs: list[Any] = []
        metas: list[Any] = []
        page = self.batch_size()
        while True:
            res = self.col.get(where=where, include=include, limit=page, offset=len(ids))
            ids += res["ids"]
            docs += res.get("documents") or []
            metas += res.get("metadatas") or []
            if len(res["ids"]) < page:
                return ids, docs, metas

    def close(self) -> None:
        """Close the client and release the locks (idempotent)."""
        if self.closed:
            return
        self.closed = True
        with self.io or contextlib.nullcontext():
            self.client.close()
        if self.io:
            self.io.close()
        if self.writer:
            self.writer.release()
        for fn in self._on_close:
            fn()

    def on_close(self, fn: Any) -> None:
        """Call ``fn()`` once the session is closed (e.g. to remove a temporary copy)."""
        self._on_close.append(fn)
