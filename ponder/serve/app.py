"""The FastAPI app of a ``Server``: routes, bodies within limits, errors in OpenAI's shape.

Needs the ``serve`` extra (FastAPI, uvicorn): ``Server`` imports this module when it is created.

Every error answer is ``{"error": {"message", "type", "param", "code"}}``: ``ApiError`` as it
says, Starlette's 404/405 reworded, a ``PonderError`` as 400 (``ConfigError``), 503
(``BackendError``) or 500, anything else a 500 that is logged with its traceback. A client that
disconnects cancels its sequences: a streaming one when Starlette notices (it listens for the
ASGI ``http.disconnect`` while streaming), a waiting one through ``_watched``.

Example:
    >>> from fastapi.testclient import TestClient
    >>> from ponder.models import ScriptedPolicy
    >>> from ponder.serve import Server
    >>> server = Server(ScriptedPolicy(["4"]), model_name="m")
    >>> with TestClient(server.app, base_url="http://127.0.0.1") as http:
    ...     reply = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "2+2?"}]})
    ...     http.get("/v2/models").json()["error"]["code"]
    'not_found'
    >>> reply.json()["choices"][0]["message"]["content"]
    '4'
    >>> server.shutdown()
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ponder.errors import BackendError, ConfigError, PonderError
from ponder.serve.replies import Reply
from ponder.serve.requests import ApiError, ChatBody, CompletionBody, PRMBody, from_validation, parse
from ponder.serve.server import LOOPBACK_HOSTS

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from ponder.serve.server import Server

log = logging.getLogger("ponder.serve")
T = TypeVar("T")


def _answer(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _guarded(endpoint: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """An unexpected exception becomes a logged 500 in OpenAI's shape (and the server keeps serving)."""

    @functools.wraps(endpoint)
    async def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return await endpoint(*args, **kwargs)
        except (ApiError, PonderError, HTTPException):
            raise
        except ClientDisconnect:  # gone while sending its body: nobody to answer
            return Response(status_code=400)
        except Exception as e:  # a bug: answer 500 and keep serving
            log.exception("%s failed", endpoint.__name__)
            raise ApiError(
                500,
                f"internal server error ({type(e).__name__}: {e}); see the server log",
                type="server_error",
            ) from e

    return run


async def _body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body: at most ``limit`` bytes (413 without reading when the declared length is
    larger), all within ``timeout`` seconds (408)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    try:
        with anyio.fail_after(timeout):  # asyncio.timeout is Python 3.11+
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(size, limit)
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408,
            f"the request body did not arrive within {timeout:g} s; send it at once",
            code="request_timeout",
            close=True,
        ) from None
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        413,
        f"the request body has {size} bytes or more, over this server's limit of {limit}; "
        "send less (or raise the server's max_body_bytes)",
        code="body_too_large",
        close=True,
    )


async def _watched(request: Request, work: Awaitable[T], on_leave: Callable[[], None]) -> T:
    """``await work``, calling ``on_leave()`` if the client disconnects first (ASGI ``http.disconnect``:
    the body has been read, so the next message is that one)."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            on_leave()
        return await task
    finally:
        watch.cancel()
        task.cancel()  # only if we were cancelled ourselves


class _Events(StreamingResponse):
    """Server-sent events that call ``on_close()`` however they end (done, client gone, cancelled)."""

    media_type = "text/event-stream"

    def __init__(self, events: Any, on_close: Callable[[], None]):
        super().__init__(events, headers={"cache-control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def build_app(server: Server) -> FastAPI:
    """The ASGI app serving ``server``'s policy and PRM."""

    async def check_host(request: Request) -> None:
        # bound to loopback: refuse other Host names, so a web page cannot rebind its domain here
        host = request.headers.get("host")
        try:
            name = urlsplit("//" + host).hostname if host else None
        except ValueError:
            name = "?"
        if server.loopback and host and name not in LOOPBACK_HOSTS:
            raise ApiError(
                400, "unexpected Host header; call the server as 127.0.0.1 or localhost", code="bad_host"
            )

    app = FastAPI(
        title="ponder serve",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(check_host)],
    )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return _answer(e)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        path = request.url.path
        if e.status_code == 404:
            err = ApiError(
                404, f"no endpoint {path}; see GET /v1/models (the base URL ends in /v1)", code="not_found"
            )
        elif e.status_code == 405:
            allow = (e.headers or {}).get("Allow", "")
            err = ApiError(405, f"{request.method} is not allowed on {path}; use {allow}",
                           code="method_not_allowed", headers={"allow": allow})  # fmt: skip
        else:
            err = ApiError(e.status_code, str(e.detail), headers=dict(e.headers or {}))
        return _answer(err)

    @app.exception_handler(RequestValidationError)  # FastAPI's own checks (bodies here are read by parse)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return _answer(from_validation(e.errors()))

    @app.exception_handler(PonderError)
    async def ponder_error(request: Request, e: PonderError) -> JSONResponse:
        status = 400 if isinstance(e, ConfigError) else 503 if isinstance(e, BackendError) else 500
        log.warning("%s %s failed: %s", request.method, request.url.path, e)
        kind = "invalid_request_error" if status == 400 else "server_error"
        return _answer(ApiError(status, str(e), type=kind))

    # -- models and health ----------------------------------------------------------------
    def card() -> dict[str, Any]:
        return {"id": server.model_name, "object": "model", "created": server.created, "owned_by": "ponder"}

    def check_model(name: str | None, *also: str | None) -> None:
        if name is not None and name != server.model_name and name not in also:
            raise ApiError(
                404,
                f"the model {name!r} does not exist here; this server serves {server.model_name!r} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        if not server.alive:
            raise ApiError(503, "the engine has stopped; restart the server", type="server_error")
        return {"status": "ok", "model": server.model_name, "prm": server.prm_name}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        check_model(name)
        return card()

    # -- generation -----------------------------------------------------------------------
    async def generate(request: Request, chat: bool) -> Any:
        server.refuse_if_draining()
        data = await _body(request, server.max_body_bytes, server.body_timeout)
        body = parse(ChatBody if chat else CompletionBody, data, server.limits)
        check_model(body.model)
        params, top_k, include_usage = body.sampling(server.limits)
        if params.logprobs and server.pieces is None:
            raise ApiError(
                400, f"{server.model_name} gives no logprobs; leave logprobs out", param="logprobs"
            )
        prompt = body.prompt(server.as_is) if isinstance(body, ChatBody) else server.raw_prompt(body.prompt)
        server.check_room(params.n)
        client = ("user", body.user) if body.user else ("conn", request.client)  # whose turn in the engine
        job = await server.start_job(
            prompt, params, client=client, top_k=top_k, param="messages" if chat else "prompt"
        )
        reply = Reply(job, model=server.model_name, chat=chat, params=params, top_k=top_k,
                      pieces=server.pieces, why=server.why_cancelled)  # fmt: skip
        if body.stream:
            return _Events(reply.events(include_usage), on_close=lambda: server.end_job(job))
        try:
            return JSONResponse(await _watched(request, reply.whole(), on_leave=job.cancel))
        finally:
            server.end_job(job)

    async def counted(request: Request, chat: bool) -> Any:
        """``generate``, counted as under way until its answer has been sent (for shutdown)."""
        server.enter()
        try:
            answer = await generate(request, chat)
        except BaseException:
            server.leave()
            raise
        if isinstance(answer, _Events):  # under way until its last event
            close = answer.on_close

            def closed() -> None:
                close()
                server.leave()

            answer.on_close = closed
        else:
            server.leave()
        return answer

    @app.post("/v1/chat/completions")
    @_guarded
    async def chat_completions(request: Request) -> Any:
        return await counted(request, chat=True)

    @app.post("/v1/completions")
    @_guarded
    async def completions(request: Request) -> Any:
        return await counted(request, chat=False)

    # -- /v1/prm/score --------------------------------------------------------------------
    @app.post("/v1/prm/score")
    @_guarded
    async def prm_score(request: Request) -> dict[str, Any]:
        if server.prm is None:
            raise ApiError(
                404, "this server serves no PRM; start it with: ponder serve --prm DIR", code="prm_not_served"
            )
        server.refuse_if_draining()
        body = parse(PRMBody, await _body(request, server.max_body_bytes, server.body_timeout), server.limits)
        check_model(body.model, server.prm_name)
        scores, tokens = await asyncio.to_thread(server.score, body.question, body.steps)
        return {
            "object": "prm.scores",
            "model": server.prm_name,
            "scores": [[float(x) for x in row] for row in scores],
            "usage": {"tokens": int(tokens)},
        }

    return app
