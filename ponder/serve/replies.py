"""A generation's answer: ``Job`` brings its streams into the event loop, ``Reply`` writes JSON or SSE.

A policy's streams block when read (``DeltaStream``), so a ``Job`` reads each on a thread of its
own and hands ``(choice, delta)`` to the event loop through one ``asyncio.Queue``; the last delta
of a choice comes with its ``Completion`` (whose text, decoded at once, is what ``generate``
returns). ``Reply`` turns them into OpenAI's objects.

Logprobs come in OpenAI's two formats: chat (``content`` entries with ``bytes`` and
``top_logprobs``) and legacy (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``).
A token's text is its own bytes decoded as UTF-8 (``Pieces``); -inf is reported as -9999.

Example:
    >>> _lp(float("-inf")), _lp(-0.5)
    (-9999.0, -0.5)
    >>> bytes(_BYTE_DECODER[c] for c in "Ġhi")  # GPT-2 byte-level BPE: "Ġ" stands for a space
    b' hi'
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ponder.errors import PonderError
from ponder.serve.requests import ApiError

if TYPE_CHECKING:
    from ponder.models.types import Completion, DeltaStream, SamplingParams

log = logging.getLogger("ponder.serve")


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


class Pieces:
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
class Job:
    """The ``n`` streams of one request, each read on a thread into one queue of the event loop."""

    def __init__(self, streams: Sequence[DeltaStream], loop: asyncio.AbstractEventLoop):
        self.streams = streams
        self.completions: list[Completion | None] = [None] * len(streams)
        self._loop = loop
        self._queue: asyncio.Queue[tuple[int, Any, Any, BaseException | None]] = asyncio.Queue()
        self._open = len(streams)
        for i, s in enumerate(streams):
            threading.Thread(target=self._read, args=(i, s), name="ponder-serve-reader", daemon=True).start()

    def _read(self, index: int, stream: DeltaStream) -> None:
        try:
            for delta in stream:
                done = stream.result(timeout=30) if delta.finish_reason is not None else None
                self._put((index, delta, done, None))
        except BaseException as e:  # the policy failed: hand the error to the request
            self._put((index, None, None, e))

    def _put(self, item: tuple[int, Any, Any, BaseException | None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits for this request
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def events(self) -> AsyncIterator[tuple[int, Any]]:
        """``(choice index, delta)`` in arrival order until every stream has ended."""
        while self._open:
            index, delta, done, error = await self._queue.get()
            if error is not None:
                self._open -= 1
                raise error
            if done is not None:
                self._open -= 1
                self.completions[index] = done
            yield index, delta

    def cancel(self) -> None:
        """Cancel the streams that have not ended (a stream's ``cancelled`` flag stays honest)."""
        for s, done in zip(self.streams, self.completions, strict=True):
            if done is None:
                s.cancel()


# ---------------------------------------------------------------- one request's answer
class Reply:
    """One generation request's answer: whole JSON (``whole``) or server-sent events (``events``).

    ``pieces`` names tokens in logprobs (None: the policy gives none); ``why`` says why a stream
    was cancelled (shutting down, the engine stopped).
    """

    def __init__(
        self,
        job: Job,
        *,
        model: str,
        chat: bool,
        params: SamplingParams,
        top_k: int,
        pieces: Pieces | None,
        why: Callable[[], str],
    ):
        self.job, self.model, self.chat, self.params, self.top_k = job, model, chat, params, top_k
        self.pieces, self.why = pieces, why
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.n = len(job.streams)
        self.prompt_tokens = int(job.streams[0].prompt_tokens)
        self.offsets = [0] * self.n  # legacy text_offset per choice

    def _cancelled(self) -> ApiError:
        return ApiError(
            503,
            f"generation was cancelled: {self.why()}; retry",
            type="server_error",
            headers={"retry-after": "5"},
        )

    def _usage(self) -> dict[str, int]:
        completion = sum(c.completion_tokens for c in self.job.completions if c is not None)
        total = self.prompt_tokens + completion
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion, "total_tokens": total}

    # -- logprobs -----------------------------------------------------------------------
    def _logprobs(self, index: int, tokens: list[Any]) -> dict[str, Any] | None:
        if not self.params.logprobs or self.pieces is None:
            return None
        piece = self.pieces
        if self.chat:
            content = []
            for t in tokens:
                text, data = piece(t.id)
                top = [{"token": (p := piece(tid))[0], "logprob": _lp(lp), "bytes": p[1]}
                       for tid, lp in (t.top or [])[: self.top_k]]  # fmt: skip
                content.append({"token": text, "logprob": _lp(t.logprob), "bytes": data, "top_logprobs": top})
            return {"content": content, "refusal": None}
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

    # -- whole answer -------------------------------------------------------------------
    async def whole(self) -> dict[str, Any]:
        tokens: list[list[Any]] = [[] for _ in range(self.n)]
        finish: list[str | None] = [None] * self.n
        async for i, delta in self.job.events():
            tokens[i].extend(delta.tokens)
            finish[i] = delta.finish_reason or finish[i]
        if "cancelled" in finish:
            raise self._cancelled()
        choices = []
        for i, c in enumerate(self.job.completions):
            assert c is not None
            choice: dict[str, Any] = {"index": i}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": c.text}
            else:
                choice["text"] = c.text
            choice["logprobs"] = self._logprobs(i, tokens[i])
            choice["finish_reason"] = finish[i]
            choice["stop_reason"] = c.stop_reason  # vLLM's extra field: the stop string matched
            choices.append(choice)
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self._usage(),
            "system_fingerprint": None,
        }

    # -- streamed answer ----------------------------------------------------------------
    def _chunk(self, choices: list[dict[str, Any]], include_usage: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "system_fingerprint": None,
        }
        if include_usage:
            out["usage"] = None
        return out

    async def events(self, include_usage: bool) -> AsyncIterator[bytes]:
        """The answer as SSE ``data:`` lines; an error mid-stream is an ``{"error": ...}`` event
        (no ``[DONE]`` after it), as OpenAI's client expects."""
        try:
            if self.chat:  # the role comes first, as OpenAI sends it
                for i in range(self.n):
                    first = {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}  # fmt: skip
                    yield _event(self._chunk([first], include_usage))
            async for i, delta in self.job.events():
                if delta.finish_reason == "cancelled":
                    yield _event(self._cancelled().body())
                    return
                if delta.text or (self.params.logprobs and delta.tokens):
                    piece: dict[str, Any] = {"index": i, "logprobs": self._logprobs(i, delta.tokens),
                                             "finish_reason": None}  # fmt: skip
                    piece.update({"delta": {"content": delta.text}} if self.chat else {"text": delta.text})
                    yield _event(self._chunk([piece], include_usage))
                if delta.finish_reason is not None:
                    done = self.job.completions[i]
                    end: dict[str, Any] = {"index": i, "logprobs": None, "finish_reason": delta.finish_reason,
                                           "stop_reason": done.stop_reason if done else None}  # fmt: skip
                    end.update({"delta": {}} if self.chat else {"text": ""})
                    yield _event(self._chunk([end], include_usage))
            if include_usage:
                last = {**self._chunk([], False), "usage": self._usage()}
                yield _event(last)
            yield b"data: [DONE]\n\n"
        except PonderError as e:  # the policy failed mid-stream: say so in the stream's own way
            log.warning("stream %s failed: %s", self.id, e)
            yield _event(ApiError(503, str(e), type="server_error").body())
        except Exception as e:  # a bug: the headers are sent, so the error goes in the stream
            log.exception("stream %s failed", self.id)
            yield _event(
                ApiError(500, f"internal server error ({type(e).__name__}: {e})", type="server_error").body()
            )


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"
