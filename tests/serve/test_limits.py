"""``ponder serve`` limits: deep JSON, a bounded connection pool, header/body/idle deadlines.

A stub policy is enough (no model): every check here happens before a request reaches the engine.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time
import types
from typing import Any

import pytest

from ponder.errors import ConfigError
from ponder.serve import MAX_JSON_DEPTH, Server
from ponder.serve.requests import _nested_deeper_than
from ponder.serve.server import _EVICTING


class _Stub:
    """Just enough of a LocalPolicy: a request that gets as far as generating is a 400."""

    name = "stub"
    tokenizer = None

    def stream(self, prompt, params, *, client=None, top_logprobs=0):
        raise ConfigError("this stub policy does not generate")


STUB = _Stub()
CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


def connect(server: Server, timeout: float = 10) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=timeout)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (or resets) the connection."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def body_of(reply: bytes) -> Any:
    return json.loads(reply.split(b"\r\n\r\n", 1)[1])


def serve_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("ponder-serve")]


def nest(k: int) -> str:
    return "[" * k + "]" * k


# ---- deep JSON --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000],
    ids=["arrays", "objects"],
)
def test_a_100k_deep_body_is_a_400_and_the_server_keeps_serving(raw, error_of, body):
    with Server(STUB) as server:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
        status, _, payload = raw(server.url, "POST", CHAT, body, conn=conn)
        err = error_of(payload)
        assert status == 400 and err["code"] == "nested_too_deeply"
        assert "nested too deeply" in err["message"] and str(MAX_JSON_DEPTH) in err["message"]
        # the body was read whole: the same connection serves the next request, and so does a new one
        assert raw(server.url, "GET", "/health", conn=conn)[0] == 200
        assert raw(server.url, "GET", "/v1/models")[0] == 200
        conn.close()


FIELDS = {  # field -> (body with the field's value nested k deep, levels above the value)
    "messages.content": (lambda v: {"messages": [{"role": "user", "content": v}]}, 3),
    "stop": (lambda v: {"messages": HI, "stop": v}, 1),
    "user": (lambda v: {"messages": HI, "user": v}, 1),
    "logit_bias": (lambda v: {"messages": HI, "logit_bias": v}, 1),
    "max_tokens": (lambda v: {"messages": HI, "max_tokens": v}, 1),
    "temperature": (lambda v: {"messages": HI, "temperature": v}, 1),
    "stream_options": (lambda v: {"messages": HI, "stream": True, "stream_options": {"x": v}}, 2),
    "model": (lambda v: {"messages": HI, "model": v}, 1),
    "unknown extra field": (lambda v: {"messages": [{"role": "user", "content": "x", "extra": v}]}, 3),
}


@pytest.mark.parametrize("field", list(FIELDS))
def test_nesting_in_any_field_is_a_plain_400_at_the_limit_and_refused_past_it(raw, error_of, field):
    """At MAX_JSON_DEPTH the field's own check answers (its message quotes the value: json.dumps
    recurses); one level more is refused before parsing. Never a 500 (a RecursionError)."""
    make, above = FIELDS[field]
    with Server(STUB) as server:
        at_limit = json.loads(nest(MAX_JSON_DEPTH - above))
        status, _, payload = raw(server.url, "POST", CHAT, make(at_limit))
        assert status in (400, 404) and error_of(payload)["code"] != "nested_too_deeply", payload
        past = json.loads(nest(MAX_JSON_DEPTH - above + 1))
        status, _, payload = raw(server.url, "POST", CHAT, make(past))
        assert status == 400 and error_of(payload)["code"] == "nested_too_deeply"


def test_completions_and_prm_bodies_are_checked_too(raw, error_of):
    with Server(STUB, rule := types.SimpleNamespace(name="rule")) as server:
        assert rule is server.prm
        for path, body in [
            ("/v1/completions", {"prompt": json.loads(nest(MAX_JSON_DEPTH))}),
            ("/v1/prm/score", {"question": "q", "steps": json.loads(nest(MAX_JSON_DEPTH))}),
        ]:
            status, _, payload = raw(server.url, "POST", path, body)
            assert status == 400 and error_of(payload)["code"] == "nested_too_deeply"


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


def _random_json(rng: random.Random, depth: int) -> Any:
    tricky = ["[", "]", "{", "}", '"', "\\", '\\"', "[[", 'a"]', "\\\\", "é"]
    kind = rng.random()
    if depth <= 0 or kind < 0.3:
        return "".join(rng.choice(tricky) for _ in range(rng.randrange(4))) if kind < 0.2 else 1
    if kind < 0.65:
        return [_random_json(rng, depth - 1) for _ in range(rng.randrange(4))]
    return {
        "".join(rng.choice(tricky) for _ in range(2)) + str(i): _random_json(rng, depth - 1)
        for i in range(rng.randrange(4))
    }


def test_the_depth_scan_agrees_with_parsing():
    """Brackets, quotes and backslashes inside strings never count; the scan never recurses."""
    rng = random.Random(0)
    for _ in range(500):
        value = _random_json(rng, rng.randrange(1, 9))
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        for limit in (0, 1, 2, 4, 8):
            assert _nested_deeper_than(text, limit) == (_depth(value) > limit), (text, limit)
    assert _nested_deeper_than(b"[" * 4_000_000, MAX_JSON_DEPTH)  # a 4 MiB body: no RecursionError


# ---- the connection pool ---------------------------------------------------------------------


def test_300_idle_sockets_keep_the_thread_count_bounded_and_a_client_is_served(raw):
    """Idle sockets take at most ``max_connections`` threads: past the cap, a new connection takes
    the place of the one idle longest (it is closed), or gets a 503 while evictions are ending."""
    before = threading.active_count()
    with Server(STUB) as server:
        cap = server.max_connections
        bound = before + 1 + cap + _EVICTING + 1  # + accept loop, connections, ending ones, overflow
        socks, peak = [], 0
        for _ in range(300):
            socks.append(connect(server))
            peak = max(peak, threading.active_count())
        time.sleep(0.5)  # the accept loop catches up
        peak = max(peak, threading.active_count())
        assert peak <= bound, (peak, bound)
        # a normal client is served: an idle socket makes room for it
        status, _, payload = raw(server.url, "GET", "/v1/models")
        assert status == 200 and payload["data"][0]["id"] == "stub"
        # every idle socket was either kept, closed to make room, or answered 503: none hangs
        outcomes = {"kept": 0, "closed": 0, "503": 0}
        for s in socks:
            s.setblocking(False)
            try:
                data = s.recv(65536)
            except BlockingIOError:
                outcomes["kept"] += 1
                continue
            except ConnectionResetError:
                data = b""
            outcomes["503" if data.startswith(b"HTTP/1.1 503") else "closed"] += 1
        assert outcomes["kept"] <= cap and outcomes["closed"] + outcomes["503"] >= 300 - cap, outcomes
        for s in socks:
            s.close()
    assert not serve_threads()


def test_busy_connections_over_the_cap_get_503_with_retry_after(error_of):
    """Connections in the middle of a request are never closed for a new one: it gets a 503."""
    head = f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    body = json.dumps({"messages": HI, "stream_options": 1}).encode()  # a 400 once it is all there
    with Server(STUB, max_connections=2) as server:
        busy = [connect(server) for _ in range(2)]
        for s in busy:  # headers and half a body: a request under way
            s.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
        time.sleep(0.3)
        late = connect(server)
        late.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        reply = read_all(late)
        assert status_of(reply) == 503 and b"retry-after: 1" in reply.lower()
        err = error_of(body_of(reply))
        assert err["code"] == "overloaded" and "2 connections" in err["message"]
        # the busy ones were not disturbed: they finish their requests
        for s in busy:
            s.sendall(body[5:])
            s.settimeout(10)
            assert status_of(s.recv(65536)) == 400  # stream_options must be an object
        late.close()
        for s in busy:
            s.close()


def test_a_new_client_takes_the_place_of_the_longest_idle_keepalive_connection(raw):
    with Server(STUB, max_connections=2) as server:
        first, second = (http.client.HTTPConnection(server.host, server.port, timeout=10) for _ in range(2))
        assert raw(server.url, "GET", "/health", conn=first)[0] == 200
        time.sleep(0.05)
        assert raw(server.url, "GET", "/health", conn=second)[0] == 200
        # both kept alive and idle; a third client is served, the first (idle longest) is closed
        assert raw(server.url, "GET", "/v1/models")[0] == 200
        assert read_all(first.sock) == b""
        assert raw(server.url, "GET", "/health", conn=second)[0] == 200  # still open
        first.close()
        second.close()


# ---- deadlines ----------------------------------------------------------------------------------


@pytest.fixture
def quick():
    """A server with half-second deadlines."""
    with Server(STUB, header_timeout=0.5, body_timeout=0.5, idle_timeout=0.5) as server:
        yield server


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    """What the server sends until it closes, and after how long; fails after ``seconds`` (a hang guard)."""
    sock.settimeout(seconds)
    t0 = time.monotonic()
    try:
        data = read_all(sock)
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for more than {seconds} s")
    return data, time.monotonic() - t0


def test_half_a_request_line_is_cut_with_a_408_after_the_header_timeout(quick, error_of):
    sock = connect(quick)
    sock.sendall(b"GET /v1/mod")  # ... and nothing more
    data, took = _closed_within(sock, 10)
    assert status_of(data) == 408 and took >= 0.4
    assert error_of(body_of(data))["code"] == "request_timeout" and b"connection: close" in data.lower()
    sock.close()


def test_a_client_trickling_headers_is_cut_at_the_deadline_not_per_byte(quick):
    """A byte every 0.1 s never lets one recv time out; the deadline is for the whole header."""
    sock = connect(quick)
    sock.sendall(b"GET /v1/models HTTP/1.1\r\n")
    t0, cut = time.monotonic(), False
    while time.monotonic() - t0 < 10:
        try:
            sock.sendall(b"X")
        except OSError:  # the server hung up
            cut = True
            break
        time.sleep(0.1)
    assert cut, "the server kept reading headers for 10 s"
    sock.close()


def test_a_connection_that_sends_nothing_is_closed_silently(quick):
    sock = connect(quick)
    data, took = _closed_within(sock, 10)
    assert data == b"" and took >= 0.4
    sock.close()


def test_a_slow_body_gets_a_408(quick, error_of):
    sock = connect(quick)
    sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{{".encode())
    data, _ = _closed_within(sock, 10)
    assert status_of(data) == 408 and "request body" in error_of(body_of(data))["message"]
    sock.close()


def test_an_idle_keepalive_connection_is_closed_after_the_idle_timeout(quick, raw):
    conn = http.client.HTTPConnection(quick.host, quick.port, timeout=10)
    assert raw(quick.url, "GET", "/health", conn=conn)[0] == 200
    data, took = _closed_within(conn.sock, 10)
    assert data == b"" and took >= 0.4  # no stray 408 that the next request would read as its answer
    conn.close()


def test_a_prompt_client_is_not_affected_by_short_deadlines(quick, raw):
    conn = http.client.HTTPConnection(quick.host, quick.port, timeout=10)
    for _ in range(5):  # keep-alive across requests, each within the deadlines
        status, _, payload = raw(quick.url, "POST", CHAT, {"messages": HI, "n": 0}, conn=conn)
        assert status == 400 and payload["error"]["param"] == "n"
        time.sleep(0.2)
    conn.close()


# ---- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"max_connections": 0},
        {"max_connections": 1.5},
        {"header_timeout": 0},
        {"body_timeout": -1},
        {"idle_timeout": "5"},
    ],
)
def test_bad_limits_are_config_errors(kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        Server(STUB, **kw)
