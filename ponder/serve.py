"""``ponder serve``: the local policy (and a PRM) behind an OpenAI-compatible HTTP API.

Standard library only: a ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive, one thread
per connection, every request handed to the policy's continuous-batching engine
(``LocalPolicy.stream``), so concurrent clients share one batch. Endpoints:

* ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``;
* ``POST /v1/chat/completions``: system/user/assistant messages (text content, or lists of
  ``{"type": "text"}`` parts), ``max_tokens``/``max_completion_tokens``, ``temperature``,
  ``top_p``, ``n``, ``stop``, ``seed``, ``logprobs``/``top_logprobs``, ``stream`` (SSE) with
  ``stream_options.include_usage``, ``user``, and vLLM's ``continue_final_message`` /
  ``add_generation_prompt`` (continue a final assistant message: ``OpenAIPolicy`` sends a
  ``Prompt.assistant_prefix`` that way);
* ``POST /v1/completions``: a raw ``prompt`` (a string, a list of one string, or token ids),
  the same sampling fields, ``logprobs`` as an int (legacy format), ``stream``; no ``echo``;
* ``POST /v1/prm/score`` (with a PRM): ``{"question", "steps": [[step, ...], ...]}`` ->
  ``{"object": "prm.scores", "model", "scores", "usage": {"tokens"}}``; ``RemotePRM`` is
  its client.

Decisions:
    * Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a
      bad body (one line naming the field and the fix), 404 for an unknown path or model (a
      request without ``model`` gets the served one), 405, 411/413 (a body over
      ``max_body_bytes`` is never read), 503 with ``retry-after`` when the engine queue is
      full or the server is shutting down, 500 (logged) for anything unexpected.
    * Unsupported features with a non-default value (tools, penalties, ``logit_bias``,
      JSON mode, ``echo``, ``best_of``, ``suffix``) are rejected with a 400 rather than
      silently ignored; unknown extra fields are ignored.
    * Logprobs are the model's raw log-probabilities (before temperature and top-p), one per
      generated token including the EOS token and the token that completed a stop string,
      so ``len(logprobs) == usage.completion_tokens`` per choice, as vLLM reports them.
      Token strings are the token's own bytes decoded as UTF-8 (a partial character shows
      as U+FFFD; ``bytes`` has the exact bytes); special tokens show their literal text.
      Legacy ``text_offset`` counts from the start of the completion (there is no echo).
    * Defaults: chat ``max_tokens`` is ``max_tokens_limit`` (cut to the context),
      completions ``max_tokens`` 16 (as OpenAI and vLLM).
    * Fairness: the engine takes turns between clients; a request's client is its ``user``
      field when given, else its connection.
    * Disconnects: a streaming client that goes away is noticed at the next write, a waiting
      one by polling its socket; either way its sequences are cancelled.
    * Shutdown (``shutdown(grace)``): stop accepting, close idle keep-alive connections,
      let running requests finish for ``grace`` seconds, then cancel the rest (a streaming
      client gets an error event, a waiting one a 503), close every socket, join threads.
    * Security: no authentication; bound to loopback it refuses Host headers that are not
      loopback names (a web page cannot rebind its domain to the model). Bind elsewhere only
      behind something that authenticates.

Example:
    >>> import json, types, urllib.request
    >>> with Server(types.SimpleNamespace(name="demo")) as server:  # a stub: no model needed
    ...     json.load(urllib.request.urlopen(server.url + "/models"))["data"][0]["id"]
    'demo'

    With the real policy (see ``ponder serve --help``)::

    >>> from ponder.models import LocalPolicy  # doctest: +SKIP
    >>> server = Server(LocalPolicy(), port=8000).start()  # doctest: +SKIP
    >>> import openai  # doctest: +SKIP
    >>> client = openai.OpenAI(base_url=server.url, api_key="x")  # doctest: +SKIP
    >>> client.chat.completions.create(model=server.model_name, max_tokens=8,
    ...     messages=[{"role": "user", "content": "2+2?"}]).choices[0].message.content  # doctest: +SKIP
    '2+2 = 4'
    >>> server.shutdown()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import re
import select
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from ponder.errors import BackendError, ConfigError, PonderError
from ponder.models.types import Prompt, SamplingParams

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_N", "DEFAULT_MAX_TOKENS_LIMIT", "ApiError", "Server"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 4 * 2**20
DEFAULT_MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_N = 64
MAX_STOP = 16
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's and vLLM's default for /v1/completions
_TICK = 0.25  # seconds between checks that a waiting client is still connected
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_ROUTES = {
    "/v1/models": "GET",
    "/health": "GET",
    "/v1/chat/completions": "POST",
    "/v1/completions": "POST",
    "/v1/prm/score": "POST",
}
# fields this server cannot honour: accepted only with these "off" values
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logit_bias": ({},),
    "tools": ([],),
    "functions": ([],),
    "tool_choice": ("none", "auto"),
    "function_call": ("none", "auto"),
    "response_format": ({"type": "text"},),
    "suffix": ("",),
    "echo": (False,),
}


class ApiError(Exception):
    """An HTTP error answer in OpenAI's JSON shape.

    Example:
        >>> ApiError(400, "n must be >= 1; send n=1 or more", param="n").body()["error"]["param"]
        'n'
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}
        self.close = close  # the request body was not read: the connection cannot be reused

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _overloaded(message: str) -> ApiError:
    return ApiError(503, message, type="server_error", code="overloaded", headers={"retry-after": "1"})


class _ClientGone(Exception):
    """The client closed its connection; nothing more can be sent."""


# ---------------------------------------------------------------- request fields
def _int(body: dict[str, Any], name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(400, f"{name} must be an integer, got {json.dumps(value)}", param=name)
    if value < lo or (hi is not None and value > hi):
        span = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise ApiError(400, f"{name} must be {span}, got {value}; send a value in range", param=name)
    return value


def _float(
    body: dict[str, Any], name: str, default: float, lo: float, hi: float, lo_open: bool = False
) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ApiError(400, f"{name} must be a number, got {json.dumps(value)}", param=name)
    if value > hi or value < lo or (lo_open and value == lo):
        span = f"in ({lo:g}, {hi:g}]" if lo_open else f"between {lo:g} and {hi:g}"
        raise ApiError(400, f"{name} must be {span}, got {value:g}; send a value in range", param=name)
    return float(value)


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false, got {json.dumps(value)}", param=name)
    return value


def _str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string, got {json.dumps(value)[:80]}", param=name)
    return value


def _stops(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "stop must be a string or a list of strings", param="stop")
    if any(not s for s in stops):
        raise ApiError(400, "stop contains an empty string; remove it", param="stop")
    if len(stops) > MAX_STOP:
        raise ApiError(400, f"stop has {len(stops)} strings, at most {MAX_STOP} are allowed", param="stop")
    return tuple(stops)


def _check_unsupported(body: dict[str, Any]) -> None:
    for name, off in _UNSUPPORTED.items():
        value = body.get(name)
        if value is not None and value not in off:
            raise ApiError(
                400,
                f"{name}={json.dumps(value)[:60]} is not supported by this server; leave it out",
                param=name,
            )


def _content(value: Any, where: str) -> str:
    """A message's text: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for k, part in enumerate(value):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(
                    400, f"{where}[{k}] is a {kind!r} part; only text parts are supported", param=where
                )
            texts.append(part["text"])
        return "\n".join(texts)  # as vLLM joins text parts for a text-only model
    raise ApiError(400, f"{where} must be a string or a list of text parts", param=where)


# ---------------------------------------------------------------- token pieces
def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE: the printable character that stands for each byte, reversed."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


_BYTE_DECODER = _byte_decoder()
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # sentencepiece byte fallback


class _Pieces:
    """Token id -> (text, bytes) as OpenAI reports a token in logprobs; cached per id."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.special = set(getattr(tokenizer, "all_special_ids", None) or ())
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_level = type(decoder).__name__ == "ByteLevel"
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token)
        if hit is not None:
            return hit
        raw = self.tokenizer.convert_ids_to_tokens(token)
        if raw is None:
            data = b""
        elif token in self.special:
            data = raw.encode()
        elif self.byte_level and all(c in _BYTE_DECODER for c in raw):
            data = bytes(_BYTE_DECODER[c] for c in raw)
        elif m := _BYTE_TOKEN.fullmatch(raw):
            data = bytes([int(m.group(1), 16)])
        else:
            data = self.tokenizer.decode([token], skip_special_tokens=False).encode()
        out = (data.decode("utf-8", errors="replace"), list(data))
        self._cache[token] = out
        return out


def _lp(value: float | None) -> float:
    # JSON has no -inf; OpenAI reports "impossible" as -9999
    return -9999.0 if value is None or not math.isfinite(value) else max(float(value), -9999.0)


# ---------------------------------------------------------------- one request's sequences
class _Job:
    """The ``n`` streams of one request, read by one thread each into a single queue."""

    def __init__(self, streams: list[Any]):
        self.streams = streams
        self._events: queue.SimpleQueue[tuple[int, Any, BaseException | None]] = queue.SimpleQueue()
        self._open = len(streams)
        self._readers = [
            threading.Thread(target=self._read, args=(i, s), name="ponder-serve-reader", daemon=True)
            for i, s in enumerate(streams)
        ]
        for t in self._readers:
            t.start()

    def _read(self, index: int, stream: Any) -> None:
        try:
            for delta in stream:
                self._events.put((index, delta, None))
        except BaseException as e:  # the engine failed: hand the error to the request thread
            self._events.put((index, None, e))

    def events(self, check: Callable[[], None]) -> Iterator[tuple[int, Any]]:
        """``(choice index, Delta)`` in arrival order until every stream has ended; ``check()``
        runs every ``_TICK`` seconds whether deltas flow or not (it may raise to stop)."""
        due = time.monotonic() + _TICK
        while self._open:
            try:
                index, delta, error = self._events.get(timeout=max(0.0, due - time.monotonic()))
            except queue.Empty:
                index, delta, error = -1, None, None
            if time.monotonic() >= due:
                check()
                due = time.monotonic() + _TICK
            if delta is None and error is None:
                continue
            if error is not None:
                self._open -= 1
                raise error
            if delta.finish_reason is not None:
                self._open -= 1
            yield index, delta

    def cancel(self) -> None:
        for s in self.streams:
            s.cancel()

    def close(self) -> None:
        """Cancel whatever still runs and wait for the readers (they end once their stream does)."""
        if any(t.is_alive() for t in self._readers):
            self.cancel()
        for t in self._readers:
            t.join(timeout=10)


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
    ):
        for name, value in (
            ("max_body_bytes", max_body_bytes),
            ("max_tokens_limit", max_tokens_limit),
            ("max_n", max_n),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
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

    def _add_thread(self, t: threading.Thread) -> None:
        with self._lock:
            self._threads.add(t)

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
        question = body.get("question")
        if not isinstance(question, str):
            raise ApiError(400, "question is required: the problem text, a string", param="question")
        steps = body.get("steps")
        if not isinstance(steps, list) or not all(
            isinstance(c, list) and all(isinstance(s, str) for s in c) for c in steps
        ):
            raise ApiError(
                400,
                'steps is required: a list of candidates, each a list of step strings, e.g. [["2+3=5"]]',
                param="steps",
            )
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
        prompt: Prompt | str | list[int] = self._chat_prompt(body) if chat else self._raw_prompt(body)
        params, top_k, stream, include_usage = self._sampling(body, chat=chat)
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

    def _chat_prompt(self, body: dict[str, Any]) -> Prompt | str:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(
                400, 'messages is required: a non-empty list of {"role", "content"} objects', param="messages"
            )
        parsed = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise ApiError(
                    400, f"messages[{i}] must be an object with role and content", param="messages"
                )
            role = "system" if m.get("role") == "developer" else m.get("role")
            if role not in ("system", "user", "assistant"):
                raise ApiError(
                    400,
                    f"messages[{i}].role {m.get('role')!r} is not supported; use system, user or assistant",
                    param="messages",
                )
            parsed.append({"role": role, "content": _content(m.get("content"), f"messages[{i}].content")})
        cont = _bool(body, "continue_final_message", False)
        add = body.get("add_generation_prompt")
        if add is not None:
            add = _bool(body, "add_generation_prompt", True)
        if cont:
            if add:
                raise ApiError(
                    400,
                    "continue_final_message and add_generation_prompt cannot both be true; "
                    "send add_generation_prompt=false",
                    param="add_generation_prompt",
                )
            if parsed[-1]["role"] != "assistant" or len(parsed) < 2:
                raise ApiError(
                    400,
                    "continue_final_message needs a final assistant message after at least one other",
                    param="messages",
                )
            return Prompt.chat(parsed[:-1], prefix=parsed[-1]["content"])
        if add is False:  # render the conversation as is; the model continues after it
            tok = self.policy.tokenizer
            if getattr(tok, "chat_template", None):
                return tok.apply_chat_template(parsed, tokenize=False, add_generation_prompt=False)
            return "\n\n".join(m["content"] for m in parsed)
        return Prompt.chat(parsed)

    def _raw_prompt(self, body: dict[str, Any]) -> str | list[int]:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            return prompt
        if (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        ):
            vocab = len(self.policy.tokenizer)
            if not all(0 <= t < vocab for t in prompt):
                raise ApiError(400, f"prompt has token ids outside 0..{vocab - 1}", param="prompt")
            return list(prompt)
        if isinstance(prompt, list) and len(prompt) > 1:
            raise ApiError(
                400, "send one prompt per request (a string or a list of token ids)", param="prompt"
            )
        raise ApiError(400, "prompt is required: a string, or a list of token ids", param="prompt")

    def _sampling(self, body: dict[str, Any], *, chat: bool) -> tuple[SamplingParams, int, bool, bool]:
        limit = self.max_tokens_limit
        default = limit if chat else min(COMPLETIONS_MAX_TOKENS, limit)
        max_tokens = _int(body, "max_tokens", default, 1, limit)
        if chat:  # the newer name wins, as in vLLM
            max_tokens = _int(body, "max_completion_tokens", max_tokens, 1, limit)
        n = _int(body, "n", 1, 1, self.max_n)
        best_of = _int(body, "best_of", None, 1)
        if best_of is not None and best_of != n:
            raise ApiError(400, "best_of is not supported; leave it out (or equal to n)", param="best_of")
        temperature = _float(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _float(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
        seed = _int(body, "seed", None, -(2**63), 2**63 - 1 - self.max_n)
        max_top = int(getattr(getattr(self.policy, "engine", None), "max_top_logprobs", 20))
        if chat:
            logprobs = _bool(body, "logprobs", False)
            top_k = _int(body, "top_logprobs", 0, 0, max_top) or 0
            if top_k and not logprobs:
                raise ApiError(400, "top_logprobs needs logprobs=true; send both", param="top_logprobs")
        else:
            k = _int(body, "logprobs", None, 0, max_top)
            logprobs, top_k = k is not None, k or 0
        stream = _bool(body, "stream", False)
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise ApiError(400, "stream_options must be an object", param="stream_options")
        include_usage = bool(stream and options and _bool(options, "include_usage", False))
        try:
            params = SamplingParams(
                n=n,  # type: ignore[arg-type]
                max_tokens=max_tokens,  # type: ignore[arg-type]
                temperature=temperature,
                top_p=top_p,
                stop=_stops(body),
                seed=seed,
                logprobs=logprobs,
            )
        except ConfigError as e:
            raise ApiError(400, str(e)) from e
        return params, top_k, stream, include_usage

    def pieces(self) -> _Pieces:
        if self._pieces is None:
            self._pieces = _Pieces(self.policy.tokenizer)
        return self._pieces


class _Reply:
    """Writes one generation request's answer: whole JSON or an SSE stream."""

    def __init__(
        self, server: Server, h: _Handler, job: _Job, *, chat: bool, params: SamplingParams, top_k: int
    ):
        self.server, self.h, self.job, self.chat = server, h, job, chat
        self.params, self.top_k = params, top_k
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self.n = len(job.streams)
        self.prompt_tokens = int(job.streams[0].prompt_tokens)
        self.offsets = [0] * self.n  # legacy text_offset per choice

    def _check(self) -> None:
        if self.h.client_gone():
            self.job.cancel()
            raise _ClientGone

    def _cancelled(self) -> ApiError:
        why = "the server is shutting down" if self.server._draining else "the engine stopped"
        return ApiError(
            503, f"generation was cancelled: {why}; retry", type="server_error", headers={"retry-after": "5"}
        )

    # -- logprobs -----------------------------------------------------------------------
    def _chat_logprobs(self, tokens: list[Any]) -> dict[str, Any]:
        piece = self.server.pieces()
        content = []
        for t in tokens:
            text, data = piece(t.id)
            top = [
                {"token": (p := piece(tid))[0], "logprob": _lp(lp), "bytes": p[1]}
                for tid, lp in (t.top or [])
            ][: self.top_k]
            content.append({"token": text, "logprob": _lp(t.logprob), "bytes": data, "top_logprobs": top})
        return {"content": content, "refusal": None}

    def _legacy_logprobs(self, index: int, tokens: list[Any]) -> dict[str, Any]:
        piece = self.server.pieces()
        out: dict[str, list[Any]] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for t in tokens:
            text = piece(t.id)[0]
            top = {piece(tid)[0]: _lp(lp) for tid, lp in (t.top or [])[: self.top_k]}
            top.setdefault(text, _lp(t.logprob))  # the chosen token is always listed, as in vLLM
            out["tokens"].append(text)
            out["token_logprobs"].append(_lp(t.logprob))
            out["top_logprobs"].append(top)
            out["text_offset"].append(self.offsets[index])
            self.offsets[index] += len(text)
        return out

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }

    # -- whole answer -------------------------------------------------------------------
    def whole(self) -> None:
        tokens: list[list[Any]] = [[] for _ in range(self.n)]
        finish: list[str | None] = [None] * self.n
        for i, delta in self.job.events(self._check):
            tokens[i].extend(delta.tokens)
            finish[i] = delta.finish_reason or finish[i]
        if "cancelled" in finish:
            raise self._cancelled()
        # the text as generate returns it: the whole completion decoded at once
        done = [s.result(timeout=30) for s in self.job.streams]
        choices = []
        for i, c in enumerate(done):
            choice: dict[str, Any] = {"index": i}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": c.text}
                choice["logprobs"] = self._chat_logprobs(tokens[i]) if self.params.logprobs else None
            else:
                choice["text"] = c.text
                choice["logprobs"] = self._legacy_logprobs(i, tokens[i]) if self.params.logprobs else None
            choice["finish_reason"] = finish[i]
            choice["stop_reason"] = c.stop_reason  # vLLM's extra field: the stop string matched
            choices.append(choice)
        self.h.send_json(
            200,
            {
                "id": self.id,
                "object": self.object,
                "created": self.created,
                "model": self.server.model_name,
                "choices": choices,
                "usage": self._usage(sum(c.completion_tokens for c in done)),
                "system_fingerprint": None,
            },
        )

    # -- streamed answer ----------------------------------------------------------------
    def _chunk(self, choices: list[dict[str, Any]], include_usage: bool) -> dict[str, Any]:
        out = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.server.model_name,
            "choices": choices,
            "system_fingerprint": None,
        }
        if include_usage:
            out["usage"] = None
        return out

    def stream(self, include_usage: bool) -> None:
        h = self.h
        try:
            h.start_events()
            if self.chat:  # the role comes first, as OpenAI sends it
                for i in range(self.n):
                    first = {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    h.send_event(self._chunk([first], include_usage))
            generated = 0
            for i, delta in self.job.events(self._check):
                if delta.finish_reason == "cancelled":
                    h.send_event(self._cancelled().body())
                    h.end_events(done=False)
                    h.close_connection = True
                    return
                generated += len(delta.tokens)
                if delta.text or (self.params.logprobs and delta.tokens):
                    h.send_event(self._chunk([self._piece(i, delta)], include_usage))
                if delta.finish_reason is not None:
                    stop = self.job.streams[i].result(timeout=30).stop_reason
                    end: dict[str, Any] = {
                        "index": i,
                        "logprobs": None,
                        "finish_reason": delta.finish_reason,
                        "stop_reason": stop,
                    }
                    end.update({"delta": {}} if self.chat else {"text": ""})
                    h.send_event(self._chunk([end], include_usage))
            if include_usage:
                last = self._chunk([], False)
                last["usage"] = self._usage(generated)
                h.send_event(last)
            h.end_events(done=True)
        except OSError as e:  # the client went away mid-stream
            self.job.cancel()
            raise _ClientGone from e
        except PonderError as e:  # the engine failed mid-stream: say so in the stream's own way
            log.warning("stream %s failed: %s", self.id, e)
            h.close_connection = True
            try:
                h.send_event(ApiError(503, str(e), type="server_error").body())
                h.end_events(done=False)
            except OSError:
                pass

    def _piece(self, i: int, delta: Any) -> dict[str, Any]:
        if self.chat:
            lps = self._chat_logprobs(delta.tokens) if self.params.logprobs else None
            return {"index": i, "delta": {"content": delta.text}, "logprobs": lps, "finish_reason": None}
        lps = self._legacy_logprobs(i, delta.tokens) if self.params.logprobs else None
        return {"index": i, "text": delta.text, "logprobs": lps, "finish_reason": None}


# ---------------------------------------------------------------- HTTP plumbing
def _shut(sock: Any) -> None:
    """Wake a thread blocked on ``sock`` (shutdown, unlike close, interrupts a blocked recv)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _HTTPServer(ThreadingHTTPServer):
    """One daemon thread per connection, tracked by the ``Server`` so shutdown can join them."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # listen backlog: bursts of connections from concurrent agents

    def __init__(self, address: tuple[str, int], app: Server):
        self.app = app
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(
            target=self._work, args=(request, client_address), name="ponder-serve-conn", daemon=True
        )
        self.app._add_thread(t)
        t.start()

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
    timeout = 300  # an idle keep-alive connection (or a stalled client) is closed after this
    server: _HTTPServer

    # -- connection state ---------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.app = self.server.app
        self.app._conn_opened(self)
        self._sent = self._body_read = self._chunked = False

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
        try:
            super().handle_one_request()
        except ConnectionError:  # the client hung up (between requests, or reset while we read)
            self.close_connection = True
        finally:
            if self.app._draining:
                self.close_connection = True
            self.app._set_busy(self, False)

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
        data = self.rfile.read(length)
        self._body_read = True
        if len(data) < length:
            raise _ClientGone
        try:
            body = json.loads(data, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(
                400, f"the body is not valid JSON ({e}); send a JSON object", code="invalid_json"
            ) from e
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object", code="invalid_json")
        return body

    def client_gone(self) -> bool:
        """Whether the peer has closed the connection (readable with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
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
            return len(self.rfile.read(length)) == length
        except (ApiError, OSError):
            return False

    def _linger(self) -> None:
        """After an early answer, read (and drop) what the client is still sending, at most
        ``max_body_bytes`` for a second: closing with unread data would reset the connection
        and could destroy the answer before the client reads it."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1.0)
            left = self.app.max_body_bytes
            while left > 0:
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
