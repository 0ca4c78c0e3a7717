"""``ponder serve``: the local policy (and a PRM) as an OpenAI-compatible HTTP server.

::

    ponder serve                                   # SmolLM2 at http://127.0.0.1:8000/v1
    ponder serve --port 0 --prm runs/prm           # any free port; /v1/prm/score too
    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 ponder run --policy openai --model smollm2-135m-instruct

The first stdout line is ``serving MODEL at URL`` (with ``--port 0`` it carries the port
picked; the port is checked before the model loads). The server is FastAPI on uvicorn
(``ponder.serve``). SIGINT or SIGTERM shuts down gracefully (running requests get ``--grace`` seconds)
and exits 0; a second signal skips the grace. Errors are ``PonderError`` s: one line on
stderr, exit status 2.

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser(prog="ponder")
    >>> _ = add_serve_parser(p.add_subparsers(dest="command"))
    >>> a = p.parse_args(["serve", "--port", "0"])
    >>> a.host, a.port, a.max_batch_size, a.max_connections, a.idle_timeout
    ('127.0.0.1', 0, 32, 256, 15.0)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ponder.errors import ConfigError, DependencyNotInstalled

__all__ = ["add_serve_parser", "cmd_serve"]


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``ponder`` subcommands; it sets ``fn`` like the other commands."""
    from ponder.serve import (
        DEFAULT_BODY_TIMEOUT,
        DEFAULT_IDLE_TIMEOUT,
        DEFAULT_MAX_CONNECTIONS,
        DEFAULT_MAX_N,
        DEFAULT_MAX_TOKENS_LIMIT,
    )

    p = subparsers.add_parser(
        "serve", help="serve the local policy (and a PRM) over an OpenAI-compatible API"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--model", help="local model folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--prm", help="a PRM folder to serve at /v1/prm/score (e.g. from 'ponder prm train')")
    p.add_argument("--name", help="the model id clients send (default: the model folder's name)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--max-batch-size", type=int, default=32, help="sequences decoded together (default 32)")
    p.add_argument(
        "--max-tokens-limit",
        type=int,
        default=DEFAULT_MAX_TOKENS_LIMIT,
        help=f"largest max_tokens a request may ask for (default {DEFAULT_MAX_TOKENS_LIMIT})",
    )
    p.add_argument(
        "--max-n", type=int, default=DEFAULT_MAX_N, help=f"most choices per request (default {DEFAULT_MAX_N})"
    )
    p.add_argument(
        "--grace", type=float, default=10.0, help="seconds running requests get at shutdown (default 10)"
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="connections and requests at once (uvicorn's limit_concurrency); past it new requests get 503 "
        f"(default {DEFAULT_MAX_CONNECTIONS})",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=DEFAULT_BODY_TIMEOUT,
        help=f"seconds for a request body to arrive (default {DEFAULT_BODY_TIMEOUT:g})",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        help=f"seconds a kept-alive connection may wait for its next request (default {DEFAULT_IDLE_TIMEOUT:g})",
    )
    p.set_defaults(fn=cmd_serve)
    return p


def _check_port_free(host: str, port: int) -> None:
    """A one-line error at once when ``host:port`` cannot be bound (taken, or not an address here)."""
    import socket

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself binds
            probe.bind(addr)
    except OSError as e:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --port (0 picks a free one)"
        ) from None


def cmd_serve(a: argparse.Namespace) -> int:
    from ponder.models.factory import make_prm
    from ponder.models.local import LocalPolicy
    from ponder.models.prm import PerTaskPRM
    from ponder.serve import Server

    if not 0 <= a.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {a.port}")
    if a.grace < 0:
        raise ConfigError(f"--grace must be >= 0 seconds, got {a.grace}")
    if a.prm and a.prm.lower() in ("verifier", "none"):  # the verifier needs each task's answer
        raise ConfigError(f"--prm {a.prm} cannot be served; pass a PRM folder (ponder prm train writes one)")
    _check_port_free(a.host, a.port)  # before the model loads, not after
    try:  # the serve extra, also before the model loads
        import ponder.serve.app  # noqa: F401
    except ImportError as e:
        raise DependencyNotInstalled.for_extra(e.name or "fastapi", "serve") from e
    policy = LocalPolicy(
        a.model, device=a.device, dtype=a.dtype, max_batch_size=a.max_batch_size, engine=True
    )
    try:
        prm = None
        if a.prm:
            prm = make_prm(a.prm, policy=policy, device=a.device, dtype=a.dtype)
            if prm is None or isinstance(prm, PerTaskPRM):  # a PRM that must be bound to a task first
                raise ConfigError(
                    f"--prm {a.prm} cannot be served; pass a PRM folder (ponder prm train writes one)"
                )
        server = Server(
            policy,
            prm,
            host=a.host,
            port=a.port,
            model_name=a.name,
            max_tokens_limit=a.max_tokens_limit,
            max_n=a.max_n,
            max_connections=a.max_connections,
            body_timeout=a.body_timeout,
            idle_timeout=a.idle_timeout,
        )
        extra = f" (PRM {server.prm_name} at {server.url}/prm/score)" if prm is not None else ""
        _say(f"serving {server.model_name} at {server.url}{extra}")
        _say(
            f"try: OPENAI_BASE_URL={server.url} ponder run --policy openai --model {server.model_name} "
            "--env math --tasks 5"
        )
        _say("Ctrl-C (or SIGTERM) stops it")
        server.serve_forever(grace=a.grace)
        _say("stopped")
    finally:
        policy.close()
    return 0
