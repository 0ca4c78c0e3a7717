"""The standard-library HTTP layer: one thread per connection, HTTP/1.1 keep-alive, JSON and SSE.

``_HTTPServer`` asks the ``Server`` to admit each new connection (a thread of its own, at most
``max_connections`` of them, so shutdown can join them); a connection over the cap is answered
503 by ``limits._Overflow``, one thread for all of them. ``_Handler`` reads a request within
deadlines (``limits._Deadlines``: the request line and headers within ``header_timeout``, the
body within ``body_timeout``, the next request on a kept-alive connection within
``idle_timeout``), a Content-Length body within ``max_body_bytes`` and ``MAX_JSON_DEPTH``, hands
it to ``Server._route``, answers errors in OpenAI's JSON shape, and writes server-sent events
(chunked on HTTP/1.1).

Example:
    >>> import http.client, json, types
    >>> from ponder.serve import Server
    >>> with Server(types.SimpleNamespace(name="demo")) as server:  # a stub: no model needed
    ...     conn = http.client.HTTPConnection(server.host, server.port)
    ...     conn.request("GET", "/v2/models")
    ...     reply = conn.getresponse()
    ...     print(reply.status, json.load(reply)["error"]["code"])
    ...     conn.close()
    404 not_found
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from ponder.errors import BackendError, ConfigError, PonderError
from ponder.serve.limits import _SEND_TIMEOUT, _Deadlines, _Overflow
from ponder.serve.requests import MAX_JSON_DEPTH, ApiError, _ClientGone, _nested_deeper_than, _too_deep

if TYPE_CHECKING:
    from ponder.serve.server import Server

log = logging.getLogger("ponder.serve")  # one logger for the package, as before it was split


def _shut(sock: Any) -> None:
    """Wake a thread blocked on ``sock`` (shutdown, unlike close, interrupts a blocked recv)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _HTTPServer(ThreadingHTTPServer):
    """One daemon thread per admitted connection, tracked by the ``Server`` so shutdown can join
    them; connections the ``Server`` does not admit go to ``_Overflow``."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # listen backlog: bursts of connections from concurrent agents

    def __init__(self, address: tuple[str, int], app: Server):
        self.app = app
        self.overflow = _Overflow(app.max_connections)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(
            target=self._work, args=(request, client_address), name="ponder-serve-conn", daemon=True
        )
        if self.app._admit(t):
            t.start()
        else:
            self.overflow.reject(request)

    def _work(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self.app._drop_thread(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("connection from %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the OpenAI client expects
    server_version = "ponder-serve"
    sys_version = ""
    timeout = _SEND_TIMEOUT  # the socket's timeout for writes; reads have deadlines (``_Deadlines``)
    server: _HTTPServer

    # -- connection state ---------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.app = self.server.app
        self._sent = self._body_read = self._chunked = False
        self.timed_out = self.evicted = False
        # a new connection must send its request at once: the header deadline runs from now
        self.expect("request line and headers", self.app.header_timeout, waiting=True)
        buffered, self.rfile = self.rfile, io.BufferedReader(_Deadlines(self))
        buffered.close()  # the socket's own reader: unused, and it would keep the socket open
        self.app._conn_opened(self)

    def expect(self, phase: str, seconds: float, waiting: bool = False) -> None:
        """What the connection reads next and how long it has: ``phase`` within ``seconds``;
        ``waiting``: no byte of that request has come yet (the connection may be evicted)."""
        self.phase, self.deadline = phase, time.monotonic() + seconds
        self.waiting_since = time.monotonic() if waiting else None

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.app._conn_closed(self)

    def parse_request(self) -> bool:
        self.app._set_busy(self, True)  # a request line has arrived
        self._sent = self._body_read = False
        return super().parse_request()

    def handle_one_request(self) -> None:
        # what an answer needs before a request line has been read (a 408)
        self.requestline, self.command, self.request_version = "", "", "HTTP/1.1"
        self._sent = self._body_read = self.timed_out = False
        try:
            super().handle_one_request()  # closes the connection on TimeoutError
            if self.timed_out and self.phase == "request line and headers" and self.waiting_since is None:
                # part of a request came, too slowly: say so (an idle connection just closes)
                self.send_error_json(
                    ApiError(
                        408,
                        f"the request line and headers did not arrive within {self.app.header_timeout:g} s; "
                        "send the whole request at once",
                        code="request_timeout",
                        close=True,
                    )
                )
        except ConnectionError:  # the client hung up (between requests, or reset while we read)
            self.close_connection = True
        finally:
            if self.app._draining:
                self.close_connection = True
            self.app._set_busy(self, False)
            self.expect("next request", self.app.idle_timeout, waiting=True)

    def handle_expect_100(self) -> bool:
        try:  # refuse an oversized body before the client sends it
            self._length(self.app.max_body_bytes)
        except ApiError as e:
            self.send_error_json(e)
            return False
        return super().handle_expect_100()

    # -- methods ------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def __getattr__(self, name: str) -> Any:  # do_PUT, do_DELETE, do_FOO...: 404 or 405
        if name.startswith("do_"):
            return lambda: self._dispatch(name[3:])
        raise AttributeError(name)

    def _dispatch(self, method: str) -> None:
        try:
            self.app._route(self, method)
        except ApiError as e:
            self.send_error_json(e)
        except _ClientGone:
            self.close_connection = True
        except ConnectionError:  # broken pipe / reset while answering
            self.close_connection = True
        except PonderError as e:
            status = 400 if isinstance(e, ConfigError) else 503 if isinstance(e, BackendError) else 500
            log.warning("%s %s failed: %s", method, self.path, e)
            self.send_error_json(
                ApiError(status, str(e), type="invalid_request_error" if status == 400 else "server_error")
            )
        except Exception as e:  # a bug: answer 500 and keep serving
            log.exception("%s %s failed", method, self.path)
            self.send_error_json(
                ApiError(
                    500,
                    f"internal server error ({type(e).__name__}: {e}); see the server log",
                    type="server_error",
                )
            )

    # -- reading ------------------------------------------------------------------------
    def _length(self, limit: int) -> int:
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            raise ApiError(411, "chunked request bodies are not supported; send Content-Length", close=True)
        raw = self.headers.get("content-length")
        if raw is None:
            raise ApiError(411, "Content-Length is required for a POST body", close=True)
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            raise ApiError(400, f"Content-Length {raw!r} is not a byte count", close=True) from None
        if length > limit:
            raise ApiError(
                413,
                f"the request body has {length} bytes, more than this server's limit of {limit}; "
                "send less (or raise the server's max_body_bytes)",
                code="body_too_large",
                close=True,
            )
        return length

    def read_json(self, limit: int) -> dict[str, Any]:
        length = self._length(limit)
        data = self._read_body(length)
        self._body_read = True
        if len(data) < length:
            raise _ClientGone
        if _nested_deeper_than(data, MAX_JSON_DEPTH):
            raise _too_deep()
        try:
            body = json.loads(data, parse_constant=_no_constant)
        except RecursionError:  # not with MAX_JSON_DEPTH far below the recursion limit; kept safe
            raise _too_deep() from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(
                400, f"the body is not valid JSON ({e}); send a JSON object", code="invalid_json"
            ) from e
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object", code="invalid_json")
        return body

    def _read_body(self, length: int) -> bytes:
        """``length`` bytes of body, all within ``body_timeout`` (else a 408 and the connection closes)."""
        self.expect("request body", self.app.body_timeout)
        try:
            return self.rfile.read(length)
        except TimeoutError:
            raise ApiError(
                408,
                f"the request body ({length} bytes) did not arrive within {self.app.body_timeout:g} s; "
                "send it at once",
                code="request_timeout",
                close=True,
            ) from None

    def client_gone(self) -> bool:
        """Whether the peer has closed the connection (readable with nothing to read)."""
        try:
            poll = select.poll()  # not select(): with many connections descriptors exceed 1024
            poll.register(self.connection, select.POLLIN)
            return bool(poll.poll(0)) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # -- writing ------------------------------------------------------------------------
    def send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection or self.app._draining:
            self.send_header("connection", "close")
        self.end_headers()
        self._sent = True
        self.wfile.write(data)

    def send_error_json(self, e: ApiError) -> None:
        if self._sent:  # an answer is already under way: all we can do is hang up
            self.close_connection = True
            return
        if e.close or not self._skip_body():
            self.close_connection = True
        try:
            self.send_json(e.status, e.body(), e.headers)
            if e.close:
                self._linger()
        except OSError:
            self.close_connection = True

    def _skip_body(self) -> bool:
        """Read and drop an unread request body (within the limit) so the connection stays
        usable; False if it cannot be (the connection must close)."""
        if self._body_read or (
            self.headers.get("content-length") is None and self.headers.get("transfer-encoding") is None
        ):
            return True
        try:
            length = self._length(self.app.max_body_bytes)
            self._body_read = True
            return len(self._read_body(length)) == length
        except (ApiError, OSError):
            return False

    def _linger(self) -> None:
        """After an early answer, read (and drop) what the client is still sending, at most
        ``max_body_bytes`` for a second in all: closing with unread data would reset the
        connection and could destroy the answer before the client reads it."""
        deadline = time.monotonic() + 1.0
        try:
            self.connection.shutdown(socket.SHUT_WR)
            left = self.app.max_body_bytes
            while left > 0 and (wait := deadline - time.monotonic()) > 0:
                self.connection.settimeout(wait)
                got = self.connection.recv(min(left, 65536))
                if not got:
                    break
                left -= len(got)
        except OSError:
            pass

    def start_events(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self._chunked = self.request_version == "HTTP/1.1"
        if self._chunked:
            self.send_header("transfer-encoding", "chunked")
        else:  # HTTP/1.0: the end of the body is the end of the connection
            self.close_connection = True
        if self.close_connection or self.app._draining:
            self.send_header("connection", "close")
        self.end_headers()
        self._sent = True

    def send_event(self, payload: dict[str, Any] | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        self._write(f"data: {data}\n\n".encode())

    def end_events(self, done: bool) -> None:
        # one write: a client that stops reading at [DONE] still finds the body complete
        self._write(b"data: [DONE]\n\n" if done else b"", last=True)

    def _write(self, data: bytes, last: bool = False) -> None:
        if not self._chunked:
            self.wfile.write(data)
            return
        out = b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        self.wfile.write(out + (b"0\r\n\r\n" if last else b""))

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s " + format, self.address_string(), *args)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
