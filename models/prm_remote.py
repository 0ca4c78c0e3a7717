"""``RemotePRM``: a PRM served by ``ponder serve --prm DIR``, used over HTTP.

Agent and search processes score steps with one shared PRM instead of each loading its own
copy: ``POST {base_url}/prm/score`` with ``{"question", "steps"}`` returns one score in
[0, 1] per step and the tokens the server read (``usage.tokens``, recorded in
``self.usage``). Standard library only (``urllib``); every call opens its own connection,
so one ``RemotePRM`` can be shared by threads.

Failures are one line each: ``ConfigError`` when the request itself is wrong (the server
has no PRM, an unknown model, a rejected body), ``BackendError`` when the server cannot be
reached, times out, is overloaded or fails. Connection errors and 429/502/503/504 answers
are retried ``max_retries`` times, waiting ``retry-after`` (at most 5 s) or 0.5 s, 1 s, ...

Example:
    >>> RemotePRM("http://127.0.0.1:8000/v1").url
    'http://127.0.0.1:8000/v1/prm/score'
    >>> prm = RemotePRM("http://127.0.0.1:8000")  # doctest: +SKIP
    >>> prm.score("What is 2 + 3?", [["2 + 3 = 5.", "Answer: 5"]])  # doctest: +SKIP
    [[0.91, 0.95]]
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from ponder.errors import BackendError, ConfigError
from ponder.models.prm import BasePRM

__all__ = ["RemotePRM"]

_RETRY_STATUS = (429, 502, 503, 504)


class RemotePRM(BasePRM):
    """A ``BasePRM`` whose scores come from a ``ponder serve`` endpoint.

    Args:
        base_url: the server's OpenAI base URL, e.g. ``http://127.0.0.1:8000/v1`` (``/v1`` is
            added when missing).
        model: the PRM id to ask for (the server checks it); None sends none.
        timeout: seconds per HTTP attempt.
        max_retries: retries after a connection error or a 429/502/503/504 answer.
    """

    name = "remote-prm"

    def __init__(self, base_url: str, model: str | None = None, timeout: float = 120.0, max_retries: int = 2):
        super().__init__()
        parts = urlsplit(base_url or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"PRM base URL {base_url!r} is not an http(s) URL; pass e.g. http://127.0.0.1:8000/v1"
            )
        if not timeout or timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        base = base_url.rstrip("/")
        self.base_url = base if base.endswith("/v1") else base + "/v1"
        self.url = self.base_url + "/prm/score"
        self.model = model
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        if model:
            self.name = model

    def __repr__(self) -> str:
        return f"RemotePRM({self.url!r}, model={self.model!r})"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "model": self.model}

    def _score(self, question: str, steps: list[list[str]]) -> tuple[list[list[float]], int]:
        payload: dict[str, Any] = {"question": question, "steps": steps}
        if self.model:
            payload["model"] = self.model
        reply = self._post(json.dumps(payload).encode())
        scores = reply.get("scores") if isinstance(reply, dict) else None
        if not isinstance(scores, list) or not all(
            isinstance(row, list) and all(isinstance(x, (int, float)) for x in row) for row in scores
        ):
            raise BackendError(
                f"{self.url} answered without a scores list; is it a ponder serve PRM endpoint?"
            )
        usage = reply.get("usage") or {}
        tokens = usage.get("tokens", 0) if isinstance(usage, dict) else 0
        return [[float(x) for x in row] for row in scores], int(tokens or 0)

    def _post(self, data: bytes) -> Any:
        request = urllib.request.Request(
            self.url, data=data, method="POST", headers={"content-type": "application/json"}
        )
        for attempt in range(self.max_retries + 1):
            wait = 0.5 * 2**attempt
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    body = resp.read()
            except urllib.error.HTTPError as e:
                status, message = e.code, _message(e)
                e.close()
                if status in _RETRY_STATUS and attempt < self.max_retries:
                    time.sleep(_retry_after(e.headers.get("retry-after"), wait))
                    continue
                raise self._error(status, message) from None
            except (urllib.error.URLError, OSError) as e:
                if attempt < self.max_retries and not isinstance(e, TimeoutError):
                    time.sleep(wait)
                    continue
                reason = getattr(e, "reason", None) or e
                if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                    raise BackendError(
                        f"the PRM server at {self.url} did not answer within {self.timeout:g} s; "
                        "raise timeout or score fewer steps per call"
                    ) from None
                raise BackendError(
                    f"cannot reach the PRM server at {self.url} ({reason}); is `ponder serve --prm DIR` running?"
                ) from None
            try:
                return json.loads(body)
            except ValueError:
                raise BackendError(f"{self.url} answered with something that is not JSON") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, status: int, message: str) -> Exception:
        if status == 404:
            return ConfigError(
                f"{self.url}: {message} (HTTP 404); start the server with `ponder serve --prm DIR` "
                "and check base_url and model"
            )
        if 400 <= status < 500 and status != 429:
            return ConfigError(
                f"the PRM server at {self.url} rejected the request (HTTP {status}): {message}"
            )
        return BackendError(f"the PRM server at {self.url} failed (HTTP {status}): {message}; check its log")


def _message(err: urllib.error.HTTPError) -> str:
    """The server's one-line error message (OpenAI's error shape), else the HTTP reason."""
    try:
        body = json.loads(err.read() or b"{}")
        msg = (
            body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("error")
        )
    except (ValueError, AttributeError, OSError):
        msg = None
    text = " ".join(str(msg or err.reason or "").split())
    return text[:300]


def _retry_after(value: str | None, default: float) -> float:
    try:
        return min(max(float(value), 0.0), 5.0) if value else default
    except ValueError:
        return default
