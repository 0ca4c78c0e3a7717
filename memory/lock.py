"""Cross-process locks of a memory directory: one writer at a time, and one Chroma call at a time.

Chroma's embedded ``PersistentClient`` is not process-safe, and a reading process writes too: opening
a client inserts a row into ``chroma.sqlite3``, and a first query may persist the collection's HNSW
index files. So a store directory holds two lock files (both POSIX ``flock``, which the OS releases
when the holding process dies, even by SIGKILL: a crashed writer never leaves a stale lock):

- ``.ponder-writer.lock``: a store opened with ``mode="w"`` holds it exclusively for its lifetime and
  writes its pid, command line and start time into it, for the message another writer gets.
- ``.ponder-io.lock``: held for the length of each Chroma call, by readers and the writer, so no two
  processes touch the files at once. Its text is a stamp the writer rewrites after each commit; a
  reader compares it to know when its in-memory HNSW index is stale (see ``MemoryStore.search``).

Within one process the writer lock is shared: a second ``mode="w"`` store of the same directory
(Chroma itself shares one client system per directory in a process) takes another reference, and
threads of one store take turns on its ``IoLock``. ``flock`` is unreliable on NFS: keep memory
directories on a local disk, or use a Chroma server (``MemoryStore.connect``).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> lease = WriterLock.acquire(root, timeout=0)
    >>> WriterLock.holder(root).pid == os.getpid()
    True
    >>> lease.release()
    >>> with IoLock(root) as io:
    ...     io.write_stamp("1")
    ...     io.read_stamp()
    '1'
"""

from __future__ import annotations

import fcntl
import logging
import os
import shlex
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

from ponder.errors import BackendError, ConfigError

__all__ = ["IO_LOCK", "WRITER_LOCK", "IoLock", "LockHolder", "WriterLock"]

log = logging.getLogger(__name__)

WRITER_LOCK = ".ponder-writer.lock"
IO_LOCK = ".ponder-io.lock"


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a writer lock: what its file says."""

    pid: int
    host: str
    since: str
    command: str

    def describe(self) -> str:
        """``pid 123 (ponder run --name a) since 2025-01-31T12:00:00+00:00``."""
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        return f"pid {self.pid}{where} ({self.command}) since {self.since}"


def _try_flock(fd: int, timeout: float, first_sleep: float = 0.001) -> bool:
    """Take an exclusive flock on ``fd``, polling until ``timeout`` seconds passed; return success."""
    deadline = time.monotonic() + max(0.0, timeout)
    sleep = first_sleep
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(sleep, left))
            sleep = min(sleep * 2, 0.1)


class WriterLock:
    """The exclusive writer lock of one directory, shared by every store of the same process.

    Build it with ``WriterLock.acquire(root, timeout)``; ``release()`` drops this reference, and the
    flock is released with the last one.
    """

    _held: ClassVar[dict[Path, list[int]]] = {}  # root -> [fd, references]
    _guard: ClassVar[threading.Lock] = threading.Lock()
    _root_locks: ClassVar[dict[Path, threading.Lock]] = {}

    def __init__(self, root: Path):
        self.root = root
        self._released = False

    @classmethod
    def acquire(cls, root: Path, timeout: float = 30.0) -> WriterLock:
        """Take the writer lock of ``root``, waiting up to ``timeout`` seconds for another process.

        Raises:
            ConfigError: another process kept the lock for ``timeout`` seconds; the message names it.

        Example:
            >>> import tempfile
            >>> root = Path(tempfile.mkdtemp())
            >>> a, b = WriterLock.acquire(root), WriterLock.acquire(root)  # one process: shared
            >>> a.release(); b.release()
        """
        root = Path(root).resolve()
        with cls._guard:
            root_lock = cls._root_locks.setdefault(root, threading.Lock())
        with root_lock:  # threads of this process opening the same root take turns here
            with cls._guard:
                if root in cls._held:
                    cls._held[root][1] += 1
                    return cls(root)
            fd = os.open(root / WRITER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_flock(fd, 0):
                holder = cls.holder(root)
                who = holder.describe() if holder else "another process"
                log.info("memory %s is being written by %s; waiting up to %.0f s", root, who, timeout)
                if not _try_flock(fd, timeout, first_sleep=0.05):
                    os.close(fd)
                    holder = cls.holder(root) or holder
                    who = holder.describe() if holder else "another process"
                    raise ConfigError(
                        f"memory {root} is being written by {who}; wait for it, or pass another --memory"
                    )
            info = "\n".join(
                [
                    str(os.getpid()),
                    socket.gethostname(),
                    datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    shlex.join(sys.argv)[:300].replace("\n", " ") or "python",
                ]
            )
            os.ftruncate(fd, 0)
            os.pwrite(fd, (info + "\n").encode("utf-8", "replace"), 0)
            with cls._guard:
                cls._held[root] = [fd, 1]
            return cls(root)

    def release(self) -> None:
        """Drop this reference (idempotent); the last one releases the flock."""
        if self._released:
            return
        self._released = True
        with self._guard:
            entry = self._held.get(self.root)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._held[self.root]
        fcntl.flock(entry[0], fcntl.LOCK_UN)
        os.close(entry[0])

    @staticmethod
    def holder(root: Path) -> LockHolder | None:
        """What the lock file of ``root`` says about its (last) holder, or ``None``."""
        try:
            lines = (Path(root) / WRITER_LOCK).read_text(encoding="utf-8", errors="replace").splitlines()
            return LockHolder(int(lines[0]), lines[1], lines[2], lines[3])
        except (OSError, ValueError, IndexError):
            return None


class IoLock:
    """A mutex across processes and threads around each Chroma call on one directory.

    Re-entrant within a thread. Where the lock file cannot be created (a read-only directory) it is a
    thread lock only. The file's text is the writer's commit stamp (``write_stamp``/``read_stamp``).

    Args:
        root: the store directory.
        timeout: seconds to wait for another process before ``BackendError``.
    """

    def __init__(self, root: Path, timeout: float = 120.0):
        self.root = Path(root)
        self.timeout = timeout
        self._rlock = threading.RLock()
        self._depth = 0
        try:
            self._fd: int | None = os.open(self.root / IO_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            try:
                self._fd = os.open(self.root / IO_LOCK, os.O_RDONLY)
            except OSError:
                log.warning("cannot create %s in %s: Chroma calls are not locked", IO_LOCK, self.root)
                self._fd = None

    def __enter__(self) -> IoLock:
        if not self._rlock.acquire(timeout=self.timeout):
            raise BackendError(f"memory {self.root} is busy in another thread; try again")
        try:
            if self._depth == 0 and self._fd is not None and not _try_flock(self._fd, self.timeout):
                raise BackendError(
                    f"memory {self.root} stayed busy in another process for {self.timeout:.0f} s; "
                    f"check no process hangs on it, then try again"
                )
        except BaseException:
            self._rlock.release()
            raise
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._rlock.release()

    def read_stamp(self) -> str:
        """The writer's last commit stamp (``""`` before the first); read it while holding the lock."""
        if self._fd is None:
            return ""
        return os.pread(self._fd, 256, 0).decode("utf-8", "replace").strip()

    def write_stamp(self, stamp: str) -> None:
        """Record a commit; call it while holding the lock."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, stamp.encode() + b"\n", 0)

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._rlock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
