"""``ponder serve`` lifecycle over real sockets, on a slow ``ScriptedPolicy``: disconnects cancel, many
clients at once, overload answers 503, shutdown is graceful and leaves nothing behind, bugs are 500s,
connections are capped and idle ones closed; and the CLI."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from urllib.parse import urlsplit

import openai
import pytest

from ponder.errors import ConfigError
from ponder.models import ScriptedPolicy
from ponder.serve import Server

STORY = [{"role": "user", "content": "Tell me a story."}]
WORDS = 20  # tokens in the scripted story
SLOW = 0.05  # seconds per scripted token: a story takes ~1 s, long enough to leave it midway


def _new_threads(before: set[threading.Thread]) -> list[str]:
    """Threads started since ``before`` that are still alive, except a policy's engine."""
    return [t.name for t in threading.enumerate() if t not in before and t.name != "ponder-engine"]


def _refused(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def _post(url: str, body: dict) -> bytes:
    parts = urlsplit(url)
    data = json.dumps(body).encode()
    return (
        f"POST {parts.path}/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data


def _client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=60)


# ---- disconnects --------------------------------------------------------------------------


def test_closing_a_stream_cancels_it(scripted, recording, wait):
    spy = recording(scripted(delay=SLOW))
    with Server(spy) as server:
        client = _client(server)
        stream = client.chat.completions.create(model=server.model_name, messages=STORY, stream=True)
        pieces = [next(stream) for _ in range(3)]  # role, then two tokens
        assert pieces[0].choices[0].delta.role == "assistant" and pieces[1].choices[0].delta.content == "Once"
        stream.close()
        [seq] = spy.streams
        wait(lambda: seq.done, what="the stream to end after the client left")
        assert seq.cancelled and seq.result().completion_tokens < WORDS
        reply = client.chat.completions.create(model=server.model_name, messages=STORY, max_tokens=4)
        assert reply.usage.completion_tokens == 4  # still serving
        client.close()


def test_leaving_a_waiting_request_cancels_it(scripted, recording, wait):
    spy = recording(scripted(delay=SLOW))
    with Server(spy) as server:
        parts = urlsplit(server.url)
        sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        sock.sendall(_post(server.url, {"messages": STORY, "n": 2}))
        wait(lambda: len(spy.streams) == 2, what="the request to start")
        sock.close()  # gone before any answer
        for seq in spy.streams:
            wait(lambda seq=seq: seq.done, what="the sequences to end")
            assert seq.cancelled and seq.result().completion_tokens < WORDS


# ---- many clients, overload -----------------------------------------------------------------


def test_50_concurrent_clients_all_get_their_answer(scripted):
    with Server(scripted(delay=0.005)) as server:
        client = _client(server)
        results: dict[int, object] = {}

        def ask(i: int) -> None:
            try:
                if i % 2:
                    chunks = list(
                        client.chat.completions.create(
                            model=server.model_name, messages=STORY, stream=True, n=2
                        )
                    )
                    results[i] = ["".join(c.delta.content or "" for ch in chunks for c in ch.choices if c.index == k)
                                  for k in range(2)]  # fmt: skip
                else:
                    reply = client.chat.completions.create(
                        model=server.model_name, messages=STORY, max_tokens=5
                    )
                    results[i] = reply.choices[0].message.content
            except Exception as e:  # collected and reported below
                results[i] = e

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        client.close()
    story = "Once upon a time there was a lighthouse keeper"
    errors = {i: r for i, r in results.items() if isinstance(r, Exception)}
    assert not errors and len(results) == 50
    assert all(results[i] == "Once upon a time there" for i in range(0, 50, 2))
    assert all(len(results[i]) == 2 and results[i][0].startswith(story) for i in range(1, 50, 2))


def test_a_full_policy_answers_503_with_retry_after(scripted, raw, error_of, wait):
    policy = scripted(delay=SLOW, max_streams=2)
    with Server(policy) as server:
        client = _client(server)
        busy = threading.Thread(
            target=lambda: client.chat.completions.create(model=server.model_name, messages=STORY, n=2)
        )
        busy.start()
        wait(lambda: policy.live == 2, what="two streams to run")
        status, headers, payload = raw(server.url, "POST", "/v1/chat/completions", {"messages": STORY})
        assert status == 503 and headers["retry-after"] == "1" and error_of(payload)["code"] == "overloaded"
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model=server.model_name, messages=STORY)
        assert e.value.status_code == 503 and "2 streams" in e.value.message
        busy.join(timeout=60)
        assert client.chat.completions.create(model=server.model_name, messages=STORY, max_tokens=2).choices
        client.close()


class _Queued(ScriptedPolicy):
    """A scripted policy with an engine-like queue, full right now."""

    engine = types.SimpleNamespace(max_queue=4, waiting=4, alive=True, max_top_logprobs=20)


def test_a_full_engine_queue_answers_503_before_starting_anything(raw, error_of):
    policy = _Queued(["x"])
    with Server(policy) as server:
        status, headers, payload = raw(server.url, "POST", "/v1/chat/completions", {"messages": STORY})
        assert (
            status == 503
            and headers["retry-after"] == "1"
            and "queue is full" in error_of(payload)["message"]
        )
    assert policy.prompts == []  # refused before the policy saw it


# ---- shutdown -----------------------------------------------------------------------------


def test_shutdown_lets_running_requests_finish_and_leaves_nothing(scripted, recording, wait):
    before = set(threading.enumerate())
    spy = recording(scripted(delay=0.02))
    server = Server(spy).start()
    url = server.url
    client = _client(server)
    assert client.models.list().data  # leaves an idle keep-alive connection in the client's pool
    out: dict[str, object] = {}

    def ask() -> None:
        try:
            chunks = client.chat.completions.create(model=server.model_name, messages=STORY, stream=True)
            out["text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        except Exception as e:
            out["error"] = e

    t = threading.Thread(target=ask)
    t.start()
    wait(lambda: spy.streams, what="the request to start")
    server.shutdown(grace=60)
    t.join(timeout=60)
    assert "error" not in out and out["text"].startswith("Once upon a time")  # finished within the grace
    assert spy.streams[0].result().completion_tokens == WORDS and not spy.streams[0].cancelled
    client.close()
    assert _refused(url)
    wait(lambda: not _new_threads(before), what=f"server threads to end: {_new_threads(before)}")
    server.shutdown()  # twice is fine


def test_shutdown_cancels_requests_past_the_grace(scripted, recording, wait):
    before = set(threading.enumerate())
    spy = recording(scripted(delay=1.0))  # a story takes 20 s: far past the grace
    server = Server(spy).start()
    client = _client(server)
    out: dict[str, BaseException] = {}

    def ask(name: str, stream: bool) -> None:
        try:
            reply = client.chat.completions.create(model=server.model_name, messages=STORY, stream=stream)
            if stream:
                list(reply)
        except Exception as e:
            out[name] = e

    threads = [threading.Thread(target=ask, args=(n, n == "stream")) for n in ("whole", "stream")]
    for t in threads:
        t.start()
    wait(lambda: len(spy.streams) == 2, what="both requests to start")
    t0 = time.monotonic()
    server.shutdown(grace=0.2)
    assert time.monotonic() - t0 < 10
    for t in threads:
        t.join(timeout=60)
    assert isinstance(out.get("whole"), openai.APIStatusError) and out["whole"].status_code == 503
    assert isinstance(out.get("stream"), openai.APIError) and "shutting down" in str(out["stream"])
    assert all(s.cancelled and s.result().completion_tokens < WORDS for s in spy.streams)
    client.close()
    assert _refused(server.url)
    wait(lambda: not _new_threads(before), what=f"server threads to end: {_new_threads(before)}")


def test_shutdown_without_start_and_context_manager(scripted):
    before = set(threading.enumerate())
    server = Server(scripted())
    server.shutdown()
    assert _refused(server.url) and not _new_threads(before)
    with pytest.raises(ConfigError, match="shut down"):
        server.start()
    with Server(scripted(), model_name="stub") as s:
        assert _client(s).models.list().data[0].id == "stub"
    assert _refused(s.url)


# ---- bugs, connections, arguments -------------------------------------------------------------


class _Broken(ScriptedPolicy):
    def stream(self, *args, **kwargs):
        raise RuntimeError("boom")


def test_unexpected_error_is_a_500_and_the_server_keeps_serving(raw, error_of, caplog):
    with Server(_Broken(["x"])) as server:
        status, _, payload = raw(server.url, "POST", "/v1/chat/completions", {"messages": STORY})
        err = error_of(payload)
        assert status == 500 and err["type"] == "server_error" and "boom" in err["message"]
        assert "boom" in caplog.text  # logged with its traceback
        assert raw(server.url, "GET", "/v1/models")[0] == 200


def test_connections_past_the_cap_get_503_and_idle_ones_are_closed(scripted, raw):
    with Server(scripted(), max_connections=2, idle_timeout=0.5) as server:
        parts = urlsplit(server.url)
        idle = [socket.create_connection((parts.hostname, parts.port), timeout=10) for _ in range(2)]
        time.sleep(0.2)
        status, _, body = raw(server.url, "GET", "/v1/models")
        assert status == 503 and body == b"Service Unavailable"  # uvicorn's own (limit_concurrency)
        for s in idle:
            s.close()
        time.sleep(0.2)
        conn_status, _, _ = raw(server.url, "GET", "/health")
        assert conn_status == 200
        # a kept-alive connection idle past idle_timeout is closed by the server
        import http.client

        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        assert raw(server.url, "GET", "/health", conn=conn)[0] == 200
        conn.sock.settimeout(5)
        t0 = time.monotonic()
        assert conn.sock.recv(1) == b"" and time.monotonic() - t0 >= 0.3
        conn.close()


@pytest.mark.parametrize(
    "kw", [{"max_connections": 0}, {"max_connections": 1.5}, {"body_timeout": 0}, {"idle_timeout": "5"}]
)
def test_bad_arguments_are_config_errors(scripted, kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        Server(scripted(), **kw)


def test_a_taken_port_is_a_config_error(scripted):
    with Server(scripted()) as server, pytest.raises(ConfigError, match="cannot listen"):
        Server(scripted(), port=server.port)


# ---- the CLI ------------------------------------------------------------------------------


def test_cli_checks_the_port_before_loading_the_model(capsys):
    from ponder.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        t0 = time.monotonic()
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == 2
    assert time.monotonic() - t0 < 5  # no model was loaded
    assert "cannot listen" in capsys.readouterr().err


@pytest.mark.real_model
def test_cli_serve_answers_and_exits_0_on_sigterm(raw, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    errors = (tmp_path / "stderr.txt").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ponder.cli", "serve", "--port", "0", "--device", "cpu", "--name", "smol"],
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        env=env,
    )
    try:
        # the first line comes once the model is loaded and the port bound (a hang guard, not a timing check)
        ready, _, _ = select.select([proc.stdout], [], [], 300)
        line = proc.stdout.readline() if ready else ""
        match = re.search(r"serving smol at (http://127\.0\.0\.1:\d+/v1)", line)
        assert match, (line, (tmp_path / "stderr.txt").read_text())
        url = match.group(1)
        assert "OPENAI_BASE_URL=" + url in proc.stdout.readline()
        status, _, body = raw(url, "GET", "/v1/models")
        assert status == 200 and body["data"][0]["id"] == "smol"
        status, _, body = raw(url, "POST", "/v1/chat/completions", {"messages": STORY, "max_tokens": 2})
        assert status == 200 and body["usage"]["completion_tokens"] == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        assert "stopped" in proc.stdout.read()
        assert _refused(url)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        errors.close()
