"""``Server``: one streaming policy behind uvicorn, on a thread of its own, with a graceful shutdown.

The socket is bound in the constructor (a taken port is a ``ConfigError`` at once), uvicorn serves
it from a background thread (``start``), and ``shutdown(grace)`` stops accepting, lets running
requests finish for ``grace`` seconds and cancels the rest. The policy's features that only some
policies have (a tokenizer to name tokens in logprobs and to read token-id prompts, an engine
with a queue and a heartbeat) are looked up here, once, so the app asks the server and not the
policy.

Example:
    >>> from ponder.models import ScriptedPolicy
    >>> with Server(ScriptedPolicy(["4"]), model_name="m") as server:
    ...     server.model_name, server.url.startswith("http://127.0.0.1:")
    ('m', True)
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time
from typing import Any

from ponder.errors import BackendError, ConfigError, DependencyNotInstalled
from ponder.models.types import Prompt, SamplingParams, StreamingPolicy
from ponder.serve.replies import Job, Pieces
from ponder.serve.requests import ApiError, Limits, overloaded

log = logging.getLogger("ponder.serve")

DEFAULT_MAX_BODY_BYTES = 4 * 2**20
DEFAULT_MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_N = 64
#: connections and requests at once (uvicorn's ``limit_concurrency``): past it uvicorn answers 503.
#: An idle keep-alive connection counts until ``idle_timeout`` closes it; a connection costs a few
#: KB on the event loop (no thread), so the cap is far above what agents keep open.
DEFAULT_MAX_CONNECTIONS = 256
#: seconds for a whole request body (4 MiB at most by default: ~1 Mbit/s at the slowest)
DEFAULT_BODY_TIMEOUT = 30.0
#: seconds a kept-alive connection may wait for its next request (OpenAI's client drops its own after 5)
DEFAULT_IDLE_TIMEOUT = 15.0
#: most alternatives per token a request may ask for, when the policy does not say
_TOP_LOGPROBS = 20
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (IPv4 or IPv6), or a one-line ``ConfigError``."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
    except OSError as e:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port/--host"
        ) from e
    return sock


class Server:
    """An OpenAI-compatible HTTP server for a ``StreamingPolicy`` (and optionally a PRM).

    Args:
        policy: a ``StreamingPolicy``: ``LocalPolicy`` on its engine, ``ScriptedPolicy``, or
            anything with ``name``, ``render``, ``encode`` and ``stream``.
        prm: a PRM (``score(question, steps)``) served at ``/v1/prm/score``; None: 404 there.
        host, port: where to listen; port 0 picks a free port (see ``port`` / ``url``).
        model_name: the model id clients send (default ``policy.name``).
        prm_name: the PRM's id in its replies (default ``prm.name``).
        max_body_bytes: larger request bodies get a 413 (a declared length: without being read).
        max_tokens_limit: the most ``max_tokens`` a request may ask for (and the chat default).
        max_n: the most choices per request.
        max_connections: connections and requests at once (uvicorn's ``limit_concurrency``);
            past it uvicorn answers 503 (its own plain-text body) until some close.
        body_timeout: seconds for a request body to arrive; then a 408 and the connection closes.
        idle_timeout: seconds a kept-alive connection may wait for its next request (uvicorn's
            ``timeout_keep_alive``).
    """

    def __init__(
        self,
        policy: StreamingPolicy,
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
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ):
        try:  # the serve extra: imported here, so that ``ponder.serve``'s defaults need neither
            import uvicorn

            from ponder.serve.app import build_app
        except ImportError as e:
            raise DependencyNotInstalled.for_extra(e.name or "uvicorn", "serve") from e

        for name, value in (("max_body_bytes", max_body_bytes), ("max_tokens_limit", max_tokens_limit),
                            ("max_n", max_n), ("max_connections", max_connections)):  # fmt: skip
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        for name, seconds in (("body_timeout", body_timeout), ("idle_timeout", idle_timeout)):
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
                raise ConfigError(f"{name} must be a number of seconds > 0, got {seconds!r}")
        if not isinstance(policy, StreamingPolicy):
            raise ConfigError(
                f"{type(policy).__name__} cannot stream, so it cannot be served; "
                "serve a LocalPolicy (on its engine) or a ScriptedPolicy"
            )
        self.engine = getattr(policy, "engine", None)
        if hasattr(policy, "engine") and self.engine is None:
            raise ConfigError(
                "the policy runs without the engine; create it with LocalPolicy(engine=True) to serve it"
            )
        self.policy = policy
        self.prm = prm
        self.model_name = model_name or str(policy.name)
        self.prm_name = prm_name or (str(getattr(prm, "name", "prm")) if prm is not None else None)
        self.max_body_bytes = max_body_bytes
        self.body_timeout = float(body_timeout)
        self.tokenizer = getattr(policy, "tokenizer", None)
        self.pieces = Pieces(self.tokenizer) if self.tokenizer is not None else None  # None: no logprobs
        top = getattr(self.engine, "max_top_logprobs", _TOP_LOGPROBS)
        self.limits = Limits(max_tokens=max_tokens_limit, max_n=max_n, max_top_logprobs=int(top))
        self.created = int(time.time())
        self._lock = threading.Lock()
        self._jobs: set[Job] = set()
        self._active = 0  # generation requests under way (from their body to their last byte)
        self._draining = False
        self._cancelling = False  # past the grace: new jobs are cancelled at once
        self._closed = threading.Event()
        self._hurry = threading.Event()  # a second signal: skip the rest of the grace period
        self._sock = _bind(host, port)
        self.host, self.port = host, int(self._sock.getsockname()[1])
        self.loopback = host in LOOPBACK_HOSTS
        self.app = build_app(self)
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            ws="none",
            log_config=None,  # the process's own logging decides (uvicorn.error, uvicorn.access)
            server_header=False,
            headers=[("server", "ponder-serve")],
            limit_concurrency=max_connections,
            timeout_keep_alive=idle_timeout,  # type: ignore[arg-type]  # a float works (call_later)
        )
        self._uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:8000/v1``."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/v1"

    def start(self) -> Server:
        """Serve from a background thread; returns self once uvicorn is accepting."""
        with self._lock:
            if self._draining:
                raise ConfigError("this server was shut down; create a new Server")
            if self._thread is not None:
                return self
            self._thread = threading.Thread(
                target=self._uvicorn.run, kwargs={"sockets": [self._sock]}, name="ponder-serve", daemon=True
            )
            self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uvicorn.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._uvicorn.started:
            raise BackendError("the HTTP server did not start; see the log above")
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
        rest (a streaming client gets an error event, a waiting one a 503); close every
        connection and end the server's thread. Safe to call twice."""
        with self._lock:
            first, self._draining = not self._draining, True
        if not first:
            self._closed.wait()
            return
        try:
            if self._thread is None:
                self._sock.close()
                return
            # uvicorn stops accepting, closes idle connections and waits for the busy ones;
            # its own deadline is a backstop in case a cancelled request does not end
            self._uvicorn.config.timeout_graceful_shutdown = int(grace) + 15
            self._uvicorn.should_exit = True
            if not self._wait_idle(grace):
                with self._lock:
                    self._cancelling = True
                    jobs = list(self._jobs)
                log.warning("cancelling %d request(s) still running after %g s", len(jobs), grace)
                for job in jobs:
                    job.cancel()
            self._thread.join(timeout=grace + 30)
            if self._thread.is_alive():
                self._uvicorn.force_exit = True
                self._thread.join(timeout=10)
        finally:
            self._closed.set()

    def _wait_idle(self, seconds: float) -> bool:
        """Wait until no generation request is under way (or ``_hurry``); True if none is."""
        deadline = time.monotonic() + seconds
        while self._active:
            if time.monotonic() > deadline or self._hurry.is_set():
                return False
            time.sleep(0.02)
        return True

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"Server({self.model_name!r}, url={self.url!r})"

    # -- what the app asks ----------------------------------------------------------------
    def refuse_if_draining(self) -> None:
        if self._draining:
            raise ApiError(
                503,
                "the server is shutting down; retry later",
                type="server_error",
                headers={"retry-after": "5"},
            )

    def why_cancelled(self) -> str:
        return "the server is shutting down" if self._draining else "the engine stopped"

    @property
    def alive(self) -> bool:
        return bool(getattr(self.engine, "alive", True))

    def as_is(self, messages: list[dict[str, str]]) -> str:
        """The conversation rendered without a generation prompt (``add_generation_prompt=false``)."""
        tok = self.tokenizer
        if tok is not None and getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        return "\n\n".join(m["content"] for m in messages)

    def raw_prompt(self, prompt: str | list[int]) -> str | list[int]:
        """A completions prompt: text, or token ids within the policy's vocabulary."""
        if isinstance(prompt, str):
            return prompt
        if self.tokenizer is None:
            raise ApiError(
                400, f"{self.model_name} reads text prompts, not token ids; send a string", param="prompt"
            )
        vocab = len(self.tokenizer)
        if not all(0 <= t < vocab for t in prompt):
            raise ApiError(400, f"prompt has token ids outside 0..{vocab - 1}", param="prompt")
        return prompt

    def check_room(self, n: int) -> None:
        """Answer 503 at once when the engine queue is full, instead of waiting in ``submit``."""
        limit, waiting = getattr(self.engine, "max_queue", None), getattr(self.engine, "waiting", 0)
        if limit is not None and waiting and waiting + n > limit:
            raise overloaded(
                f"the engine queue is full ({waiting} of {limit} sequences waiting); retry shortly"
            )

    async def start_job(
        self, prompt: Prompt | str | list[int], params: SamplingParams, *, client: Any, top_k: int, param: str
    ) -> Job:
        """Start the request's sequences (on a worker thread: ``stream`` may tokenize or wait for
        queue room) and track them, so that shutdown can cancel them."""
        try:
            streams = await asyncio.to_thread(
                self.policy.stream, prompt, params, client=client, top_logprobs=top_k
            )
        except ConfigError as e:
            raise ApiError(400, str(e), param=param) from e
        except BackendError as e:
            if self.alive:
                raise overloaded(str(e)) from e  # the queue stayed full: retry later
            raise ApiError(503, str(e), type="server_error", code="engine_stopped") from e
        job = Job(list(streams), asyncio.get_running_loop())
        with self._lock:
            self._jobs.add(job)
            late = self._cancelling
        if late:
            job.cancel()
        return job

    def end_job(self, job: Job) -> None:
        """Forget a finished request's job, cancelling what still runs (its client left)."""
        job.cancel()
        with self._lock:
            self._jobs.discard(job)

    def enter(self) -> None:
        with self._lock:
            self._active += 1

    def leave(self) -> None:
        with self._lock:
            self._active -= 1

    def score(self, question: str, steps: list[list[str]]) -> tuple[list[list[float]], int]:
        """The PRM's scores of ``steps`` and the tokens it read (blocking: run on a worker thread)."""
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
