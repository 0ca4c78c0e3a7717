"""Connection limits: read deadlines, the 503 answer for connections over the cap, idleness.

``_Deadlines`` is a connection's raw reader: each ``recv`` waits only until the handler's current
deadline, so a request line, headers or body trickled a byte at a time still end on time (a
socket timeout bounds one ``recv``, not the whole). ``_Overflow`` answers, from one thread, the
connections the ``Server`` does not admit. ``_quiet`` tells whether an idle connection has unread
bytes (a request starting), so the ``Server`` never closes one that is about to be used.

Example:
    >>> import socket
    >>> a, b = socket.socketpair()
    >>> _quiet(a), b.sendall(b"GET"), _quiet(a)
    (True, None, False)
    >>> a.close(), b.close()
    (None, None)
"""

from __future__ import annotations

import contextlib
import io
import json
import queue
import select
import selectors
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from ponder.serve.requests import ApiError

if TYPE_CHECKING:
    from ponder.serve.http import _Handler

#: a write (an answer, an event) may block this long on a client that does not read
_SEND_TIMEOUT = 300.0


class _Deadlines(io.RawIOBase):
    """A connection's reads, each bounded by the handler's current deadline.

    A socket timeout bounds one ``recv``; a client sending a byte at a time would never hit it.
    Here every ``recv`` waits only for what is left until ``h.deadline``, so the whole request
    line and headers (or the whole body) must arrive in time. A read past the deadline raises
    ``TimeoutError`` and marks ``h.timed_out``; writes keep ``_SEND_TIMEOUT``.
    """

    def __init__(self, h: _Handler):
        self._h = h
        self._sock = h.connection

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        h = self._h
        left = h.deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError(f"no {h.phase} within the time allowed")
            self._sock.settimeout(left)
            n = self._sock.recv_into(buffer)
        except TimeoutError:
            h.timed_out = True
            raise
        finally:
            self._sock.settimeout(_SEND_TIMEOUT)
        if n and h.waiting_since is not None:  # the first bytes of a request
            h.waiting_since = None
            if h.phase == "next request":  # kept alive: the header deadline starts now
                h.expect("request line and headers", h.app.header_timeout)
        return n


class _Overflow:
    """Answers connections over ``max_connections``: a 503 with Retry-After, then a lingering close.

    One thread serves all of them (started when first needed), so a flood of connections never
    adds threads. Each one is answered at once, then read and dropped for at most ``LINGER``
    seconds: closing a socket with unread data would reset it and could destroy the answer
    before the client reads it. At most ``MAX_LINGERING`` linger; older ones are closed first.
    """

    LINGER = 1.0
    MAX_LINGERING = 256

    def __init__(self, max_connections: int):
        body = json.dumps(
            ApiError(
                503,
                f"the server is serving its maximum of {max_connections} connections; retry shortly",
                type="server_error",
                code="overloaded",
            ).body()
        ).encode()
        self._answer = (
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n"
            "server: ponder-serve\r\n\r\n"
        ).encode() + body
        self._queue: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.rejected = 0  # connections answered 503, for tests and logs

    def reject(self, sock: socket.socket) -> None:
        with self._lock:
            if self._closed:
                sock.close()
                return
            self.rejected += 1
            self._queue.put(sock)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ponder-serve-overflow", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Stop the thread (closing what still lingers); safe to call twice."""
        with self._lock:
            self._closed, thread = True, self._thread
            self._queue.put(None)
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        lingering: dict[socket.socket, float] = {}  # socket -> when to close it, oldest first
        with selectors.DefaultSelector() as sel:  # not select(): descriptors may exceed 1024

            def drop(sock: Any) -> None:
                lingering.pop(sock, None)
                with contextlib.suppress(KeyError, ValueError):
                    sel.unregister(sock)
                sock.close()

            while True:
                if not lingering or not self._queue.empty():
                    sock = self._queue.get()
                    if sock is None:
                        break
                    try:
                        sock.setblocking(False)
                        sock.send(self._answer)  # small: it fits the empty send buffer
                        sock.shutdown(socket.SHUT_WR)
                        sel.register(sock, selectors.EVENT_READ)
                    except OSError:
                        sock.close()
                        continue
                    lingering[sock] = time.monotonic() + self.LINGER
                    if len(lingering) > self.MAX_LINGERING:
                        drop(next(iter(lingering)))
                    continue
                for key, _ in sel.select(timeout=0.05):
                    try:
                        if key.fileobj.recv(65536):  # type: ignore[union-attr]
                            continue
                    except BlockingIOError:
                        continue
                    except OSError:
                        pass
                    drop(key.fileobj)  # the client closed (or reset): done
                now = time.monotonic()
                for sock, deadline in list(lingering.items()):
                    if deadline > now:
                        break
                    drop(sock)
            for sock in list(lingering):
                drop(sock)


def _quiet(sock: Any) -> bool:
    """Whether nothing waits unread on ``sock`` (a request may have come since it was idle).

    A poll, not a peek: a socket with a timeout waits for data before any ``recv``.
    """
    try:
        poll = select.poll()
        poll.register(sock, select.POLLIN)
        return not poll.poll(0)
    except (OSError, ValueError):
        return True  # closed or broken: closing it costs nothing
