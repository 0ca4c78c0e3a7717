"""A generation's answer: ``_Job`` reads its engine streams, ``_Reply`` writes them as JSON or SSE.

A ``_Job`` holds the ``n`` streams of one request, each read by a thread into one queue that the
request's thread drains, checking every ``_TICK`` that the client is still there.

Logprobs come in OpenAI's two formats: chat (``content`` entries with ``bytes`` and
``top_logprobs``) and legacy (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``).
A token's text is its own bytes decoded as UTF-8 (``_Pieces``); -inf is reported as -9999.

Example:
    >>> _lp(float("-inf")), _lp(-0.5)
    (-9999.0, -0.5)
    >>> bytes(_BYTE_DECODER[c] for c in "Ġhi")  # GPT-2 byte-level BPE: "Ġ" stands for a space
    b' hi'
"""

from __future__ import annotations

import logging
import math
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ponder.errors import PonderError
from ponder.serve.requests import ApiError, _ClientGone

if TYPE_CHECKING:
    from ponder.models.types import SamplingParams
    from ponder.serve.http import _Handler
    from ponder.serve.server import Server

log = logging.getLogger("ponder.serve")  # one logger for the package, as before it was split

_TICK = 0.25  # seconds between checks that a waiting client is still connected


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


# ---------------------------------------------------------------- one request's answer
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
