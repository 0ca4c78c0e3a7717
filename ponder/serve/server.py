"""``Server``: listening, routing, the lifecycle (start, graceful shutdown) and each request's job.

A generation request becomes a ``_Job`` (its engine streams) answered by a ``_Reply``; the server
tracks the jobs so that shutdown can cancel those still running after the grace period.

Example:
    >>> import types
    >>> with Server(types.SimpleNamespace(name="demo"), model_name="m") as server:  # a stub policy
    ...     server.model_name, server.url.startswith("http://127.0.0.1:")
    ('m', True)
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ponder.errors import BackendError, ConfigError
from ponder.serve.http import _Handler, _HTTPServer, _shut
from ponder.serve.limits import _quiet
from ponder.serve.replies import _Job, _Pieces, _Reply
from ponder.serve.requests import (
    ApiError,
    _chat_prompt,
    _check_unsupported,
    _overloaded,
    _prm_request,
    _raw_prompt,
    _sampling,
    _str,
)

if TYPE_CHECKING:
    from ponder.models.types import Prompt

log = logging.getLogger("ponder.serve")  # one logger for the package, as before it was split

DEFAULT_MAX_BODY_BYTES = 4 * 2**20
DEFAULT_MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_N = 64
#: connections served at once, one thread each (a waiting thread costs little): 4x the engine's
#: default batch of 32, and twice what one ``ponder run --policy openai --concurrency 16`` keeps in
#: flight (its max_concurrency is 4x the concurrency). When all are taken, an idle one makes room.
DEFAULT_MAX_CONNECTIONS = 128
#: seconds for the request line and headers (from the connection, or from a request's first byte)
DEFAULT_HEADER_TIMEOUT = 10.0
#: seconds for a whole request body (4 MiB at most by default: ~1 Mbit/s at the slowest)
DEFAULT_BODY_TIMEOUT = 30.0
#: seconds a kept-alive connection may wait for its next request (OpenAI's client drops its own after 5)
DEFAULT_IDLE_TIMEOUT = 15.0
#: evicted connections whose thread has not ended yet, at most, beyond ``max_connections``
_EVICTING = 8
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_ROUTES = {
    "/v1/models": "GET",
    "/health": "GET",
    "/v1/chat/completions": "POST",
    "/v1/completions": "POST",
    "/v1/prm/score": "POST",
}


# ---------------------------------------------------------------- the server
class Server:
    """An OpenAI-compatible HTTP server for a ``LocalPolicy`` (and optionally a PRM).

    Args:
        policy: a ``LocalPolicy`` with the engine (anything with ``name``, ``stream``,
            ``encode`` and ``tokenizer``).
        prm: a PRM (``score(question, steps)``) served at ``/v1/prm/score``; None: 404 there.
        host, port: where to listen; port 0 picks a free port (see ``port`` / ``url``).
        model_name: the model id clients send (default ``policy.name``).
        prm_name: the PRM's id in its replies (default ``prm.name``).
        max_body_bytes: larger request bodies get a 413 without being read.
        max_tokens_limit: the most ``max_tokens`` a request may ask for (and the chat default).
        max_n: the most choices per request.
        max_connections: connections served at once, a thread each. When all are taken, a new
            connection takes the place of the one idle longest (waiting for its next request, or
            for its first byte); when none is idle it is answered 503 with Retry-After and closed.
        header_timeout: seconds for a request line and headers to arrive; then the connection
            is closed (with a 408 if part of a request came).
        body_timeout: seconds for a request body to arrive; then a 408 and the connection closes.
        idle_timeout: seconds a kept-alive connection may wait for its next request.
    """

    def __init__(
        self,
        policy: Any,
        prm: Any = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model_name: str | None = None,
        prm_name: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
        max_n: int = DEFAULT_MAX_N,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ):
        for name, value in (
            ("max_body_bytes", max_body_bytes),
            ("max_tokens_limit", max_tokens_limit),
            ("max_n", max_n),
            ("max_connections", max_connections),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        for name, seconds in (
            ("header_timeout", header_timeout),
            ("body_timeout", body_timeout),
            ("idle_timeout", idle_timeout),
        ):
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
                raise ConfigError(f"{name} must be a number of seconds > 0, got {seconds!r}")
        if getattr(policy, "engine", True) is None:
            raise ConfigError(
                "the policy runs without the engine; create it with LocalPolicy(engine=True) to serve it"
            )
        self.policy = policy
        self.prm = prm
        self.model_name = model_name or str(getattr(policy, "name", "local"))
        self.prm_name = prm_name or (str(getattr(prm, "name", "prm")) if prm is not None else None)
        self.max_body_bytes = max_body_bytes
        self.max_tokens_limit = max_tokens_limit
        self.max_n = max_n
        self.max_connections = max_connections
        self.header_timeout = float(header_timeout)
        self.body_timeout = float(body_timeout)
        self.idle_timeout = float(idle_timeout)
        self.created = int(time.time())
        self._pieces: _Pieces | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._conns: dict[_Handler, bool] = {}  # open connections -> busy with a request
        self._threads: set[threading.Thread] = set()
        self._jobs: set[_Job] = set()
        self._draining = False
        self._closed = threading.Event()
        self._hurry = threading.Event()  # a second signal: skip the rest of the grace period
        self._thread: threading.Thread | None = None
        try:
            self._httpd = _HTTPServer((host, port), self)
        except OSError as e:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port/--host"
            ) from e
        self.host, self.port = host, int(self._httpd.server_address[1])
        self.loopback = host in _LOOPBACK_HOSTS

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:8000/v1``."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/v1"

    def start(self) -> Server:
        """Serve from a background thread; returns self."""
        with self._lock:
            if self._draining:
                raise ConfigError("this server was shut down; create a new Server")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._httpd.serve_forever,
                    kwargs={"poll_interval": 0.1},
                    name="ponder-serve",
                    daemon=True,
                )
                self._thread.start()
        return self

    def serve_forever(self, grace: float = 10.0) -> None:
        """Serve until SIGINT/SIGTERM (when called from the main thread) or ``shutdown()``
        from another thread, then shut down gracefully. A second signal skips the grace."""
        self.start()
        stop = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            if stop.is_set():
                self._hurry.set()
            stop.set()

        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            while not stop.wait(0.2) and not self._draining:
                pass
            self.shutdown(grace)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting; let running requests finish for up to ``grace`` seconds, cancel the
        rest; close every connection and join the server's threads. Safe to call twice."""
        with self._lock:
            if self._draining:
                first = False
            else:
                first = self._draining = True
        if not first:
            self._closed.wait()
            return
        try:
            if self._thread is not None:
                self._httpd.shutdown()  # returns once the accept loop has stopped
                self._thread.join()
            self._httpd.server_close()  # new connections are now refused
            self._httpd.overflow.close()
            with self._lock:
                idle = [h for h, busy in self._conns.items() if not busy]
            for h in idle:  # waiting for a next request that must not come
                _shut(h.connection)
            if not self._wait_idle(grace):
                with self._lock:
                    jobs = list(self._jobs)
                log.warning("cancelling %d request(s) still running after %g s", len(jobs), grace)
                for job in jobs:
                    job.cancel()
                self._wait_idle(5.0)
            # hang up on everyone left; sweep again for a connection accepted just before the
            # accept loop stopped, whose thread registers it only now
            deadline = time.monotonic() + 10
            while True:
                with self._lock:
                    conns, threads = list(self._conns), list(self._threads)
                if not threads:
                    break
                if time.monotonic() > deadline:
                    log.warning("%d connection thread(s) did not end", len(threads))
                    break
                for h in conns:
                    _shut(h.connection)
                for t in threads:
                    t.join(timeout=0.05)
        finally:
            self._closed.set()

    def _wait_idle(self, seconds: float) -> bool:
        """Wait until no connection is busy (or ``_hurry``); True if none is."""
        deadline = time.monotonic() + seconds
        with self._changed:
            while any(self._conns.values()):
                left = deadline - time.monotonic()
                if left <= 0 or self._hurry.is_set():
                    return False
                self._changed.wait(min(left, 0.1))
        return True

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"Server({self.model_name!r}, url={self.url!r})"

    # -- bookkeeping called by the HTTP side ------------------------------------------------
    def _conn_opened(self, h: _Handler) -> None:
        with self._lock:
            self._conns[h] = False

    def _conn_closed(self, h: _Handler) -> None:
        with self._changed:
            self._conns.pop(h, None)
            self._changed.notify_all()

    def _set_busy(self, h: _Handler, busy: bool) -> None:
        with self._changed:
            if h in self._conns:
                self._conns[h] = busy
            self._changed.notify_all()

    def _admit(self, t: threading.Thread) -> bool:
        """Register the thread of a new connection, if there is room: under ``max_connections``
        threads, or by closing the connection idle longest (its thread ends at once; at most
        ``_EVICTING`` of those may still be ending). False: answer 503."""
        with self._lock:
            live = len(self._threads)
            if live >= self.max_connections:
                victim = self._idlest() if live < self.max_connections + _EVICTING else None
                if victim is None:
                    return False
                victim.evicted = True
                log.debug("closing an idle connection for a new one (%d connections)", live)
                _shut(victim.connection)
            self._threads.add(t)
            return True

    def _idlest(self) -> _Handler | None:
        """The connection waiting longest for a request that has not started (caller holds the lock)."""
        waiting = [h for h in self._conns if h.waiting_since is not None and not h.evicted]
        for h in sorted(waiting, key=lambda h: h.waiting_since or 0.0):
            if _quiet(h.connection):
                return h
        return None

    def _drop_thread(self, t: threading.Thread) -> None:
        with self._lock:
            self._threads.discard(t)

    # -- routing ------------------------------------------------------------------------
    def _route(self, h: _Handler, method: str) -> None:
        path = urlsplit(h.path).path.rstrip("/") or "/"
        host = h.headers.get("host")  # absent only from HTTP/1.0 clients, never from a browser
        if self.loopback and host and urlsplit("//" + host).hostname not in _LOOPBACK_HOSTS:
            raise ApiError(
                400, "unexpected Host header; call the server as 127.0.0.1 or localhost", code="bad_host"
            )
        allowed = _ROUTES.get(path) or ("GET" if path.startswith("/v1/models/") else None)
        if allowed is None:
            raise ApiError(
                404, f"no endpoint {path}; see GET /v1/models (the base URL ends in /v1)", code="not_found"
            )
        if method != allowed:
            raise ApiError(
                405,
                f"{method} is not allowed on {path}; use {allowed}",
                code="method_not_allowed",
                headers={"allow": allowed},
                close=method == "HEAD",  # an answer to HEAD has no body: do not reuse the connection
            )
        if method == "GET":
            h.send_json(200, self._get(path))
            return
        if self._draining:
            raise ApiError(
                503,
                "the server is shutting down; retry later",
                type="server_error",
                headers={"retry-after": "5"},
            )
        body = h.read_json(self.max_body_bytes)
        if path == "/v1/prm/score":
            h.send_json(200, self._prm_score(body))
        else:
            self._generate(h, body, chat=path == "/v1/chat/completions")

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "ponder"}

    def _get(self, path: str) -> dict[str, Any]:
        if path == "/health":
            engine = getattr(self.policy, "engine", None)
            alive = getattr(engine, "alive", True)
            if not alive:
                raise ApiError(503, "the engine has stopped; restart the server", type="server_error")
            return {"status": "ok", "model": self.model_name, "prm": self.prm_name}
        if path == "/v1/models":
            return {"object": "list", "data": [self._model_card()]}
        name = path.removeprefix("/v1/models/")
        if name != self.model_name:
            raise self._unknown_model(name)
        return self._model_card()

    def _unknown_model(self, name: Any) -> ApiError:
        return ApiError(
            404,
            f"the model {name!r} does not exist here; this server serves {self.model_name!r} (GET /v1/models)",
            param="model",
            code="model_not_found",
        )

    def _check_model(self, body: dict[str, Any], *also: str | None) -> None:
        name = body.get("model")
        if name is not None and name != self.model_name and name not in also:
            raise self._unknown_model(name)

    # -- /v1/prm/score ------------------------------------------------------------------
    def _prm_score(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.prm is None:
            raise ApiError(
                404, "this server serves no PRM; start it with: ponder serve --prm DIR", code="prm_not_served"
            )
        self._check_model(body, self.prm_name)
        question, steps = _prm_request(body)
        scores, tokens = self._run_prm(question, steps)
        return {
            "object": "prm.scores",
            "model": self.prm_name,
            "scores": [[float(x) for x in row] for row in scores],
            "usage": {"tokens": int(tokens)},
        }

    def _run_prm(self, question: str, steps: list[list[str]]) -> tuple[list[list[float]], int]:
        from ponder.models.prm import BasePRM

        if not steps:
            return [], 0
        if isinstance(self.prm, BasePRM):
            # ``_score`` returns this call's token count; reading ``usage`` around ``score``
            # would mix in concurrent calls
            scores, tokens = self.prm._score(question, [list(c) for c in steps])
            self.prm.usage.record(tokens)
        else:
            scores, tokens = self.prm.score(question, steps), 0
        if [len(r) for r in scores] != [len(c) for c in steps]:
            raise BackendError(f"the PRM {self.prm_name} returned scores that do not match the steps")
        return scores, tokens

    # -- generation ---------------------------------------------------------------------
    def _generate(self, h: _Handler, body: dict[str, Any], *, chat: bool) -> None:
        self._check_model(body)
        _check_unsupported(body)
        prompt: Prompt | str | list[int] = (
            _chat_prompt(body, self.policy) if chat else _raw_prompt(body, self.policy)
        )
        params, top_k, stream, include_usage = _sampling(
            body, chat=chat, policy=self.policy, max_tokens_limit=self.max_tokens_limit, max_n=self.max_n
        )
        user = _str(body, "user")
        client = ("user", user) if user else ("conn", id(h))
        self._check_room(params.n)
        try:
            streams = self.policy.stream(prompt, params, client=client, top_logprobs=top_k)
        except ConfigError as e:
            raise ApiError(400, str(e), param="messages" if chat else "prompt") from e
        except BackendError as e:
            if getattr(getattr(self.policy, "engine", None), "alive", True):
                raise _overloaded(str(e)) from e  # the queue stayed full: retry later
            raise ApiError(503, str(e), type="server_error", code="engine_stopped") from e
        job = _Job(streams)
        with self._lock:
            self._jobs.add(job)
        try:
            reply = _Reply(self, h, job, chat=chat, params=params, top_k=top_k)
            if stream:
                reply.stream(include_usage)
            else:
                reply.whole()
        finally:
            job.close()
            with self._lock:
                self._jobs.discard(job)

    def _check_room(self, n: int) -> None:
        """Answer 503 at once when the engine queue is full, instead of blocking in ``submit``."""
        engine = getattr(self.policy, "engine", None)
        limit = getattr(engine, "max_queue", None)
        if engine is None or limit is None:
            return
        waiting = engine.waiting
        if waiting and waiting + n > limit:
            raise _overloaded(
                f"the engine queue is full ({waiting} of {limit} sequences waiting); retry shortly"
            )

    def pieces(self) -> _Pieces:
        if self._pieces is None:
            self._pieces = _Pieces(self.policy.tokenizer)
        return self._pieces
