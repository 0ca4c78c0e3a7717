"""Shared pieces of the ``ponder serve`` tests: the real policy, a scripted one, raw HTTP, waiting,
a recording wrapper, OpenAI's error shape."""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest


@pytest.fixture(scope="module")
def policy():
    """The real SmolLM2 policy on the engine; closed (engine thread stopped) after the module."""
    from ponder.models.local import LocalPolicy

    p = LocalPolicy(device="cpu")
    yield p
    p.close()


@pytest.fixture(scope="module")
def scripted():
    """``scripted(**kw) -> ScriptedPolicy``: replies depend on the question (a default for the rest)."""
    from ponder.models import ScriptedPolicy

    def make(**kw: Any) -> ScriptedPolicy:
        return ScriptedPolicy(SCRIPT, **kw)

    return make


#: what the scripted policy answers: the first key found in the prompt wins
SCRIPT = {
    "2+2": "2 + 2 = 4. The answer is 4.",
    "story": "Once upon a time there was a lighthouse keeper who loved the sea and wrote long letters to it.",
    "": "I do not know.",
}


def raw_request(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request with http.client; ``body`` is JSON-encoded unless bytes. Returns status,
    lower-cased headers and the decoded JSON (or the raw bytes when it is not JSON)."""
    parts = urlsplit(url)
    own = conn is None
    conn = conn or http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    hdrs = {"content-type": "application/json", **(headers or {})}
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        out_headers = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        if own:
            conn.close()
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = payload
    return resp.status, out_headers, parsed


@pytest.fixture(scope="module")
def raw():
    """``raw(url, method, path, body=None, headers=None, conn=None) -> (status, headers, json)``."""
    return raw_request


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``condition()`` until true; fail after ``timeout`` seconds (a hang guard, not a timing check)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def wait():
    """``wait(condition, timeout=60, what=...)``: poll until true."""
    return wait_for


class Recording:
    """A policy wrapper that keeps every stream the server starts (to check cancellation)."""

    def __init__(self, policy: Any):
        self._policy = policy
        self.streams: list[Any] = []
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)

    def stream(self, *args: Any, **kwargs: Any) -> list[Any]:
        streams = self._policy.stream(*args, **kwargs)
        with self.lock:
            self.streams.extend(streams)
        return streams


@pytest.fixture(scope="module")
def recording():
    """``recording(policy) -> Recording``: a policy wrapper that records started streams."""
    return Recording


def error_shape(payload: Any) -> dict[str, Any]:
    """The ``error`` object of an OpenAI error reply, checked for shape."""
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    err = payload["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"] and "\n" not in err["message"]
    return err


@pytest.fixture(scope="module")
def error_of():
    """``error_of(payload) -> error dict`` (asserts OpenAI's error shape, one-line message)."""
    return error_shape
