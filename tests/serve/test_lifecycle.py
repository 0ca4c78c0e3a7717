"""``ponder serve`` lifecycle: disconnects cancel, shutdown is graceful and leaves nothing behind,
backpressure and bugs answer cleanly, and the CLI starts and stops."""

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
import types
from urllib.parse import urlsplit

import openai
import pytest

from ponder.errors import BackendError
from ponder.serve import Server

LONG = [{"role": "user", "content": "Write a very long story about a lighthouse keeper and the sea."}]
BIG = 400  # far more tokens than a cancelled request may generate


def _new_threads(before: set[threading.Thread]) -> list[str]:
    """Threads started since ``before`` that are still alive, except the policy's engine."""
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


# ---- disconnects --------------------------------------------------------------------------


@pytest.mark.real_model
def test_closing_a_stream_cancels_it(policy, recording, wait):
    spy = recording(policy)
    with Server(spy) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        stream = client.chat.completions.create(
            model=server.model_name, messages=LONG, max_tokens=BIG, temperature=0, stream=True
        )
        pieces = [next(stream) for _ in range(3)]  # role, then two tokens
        assert pieces[0].choices[0].delta.role == "assistant"
        stream.close()
        [seq] = spy.streams
        wait(lambda: seq.done, what="the stream to end after the client left")
        assert seq.cancelled and seq.result().completion_tokens < BIG
        # the engine keeps serving
        reply = client.chat.completions.create(model=server.model_name, messages=LONG, max_tokens=4)
        assert reply.usage.completion_tokens == 4
        client.close()
    wait(lambda: policy.engine.info()["running"] == 0, what="the engine to be idle")


@pytest.mark.real_model
def test_leaving_a_waiting_request_cancels_it(policy, recording, wait):
    spy = recording(policy)
    with Server(spy) as server:
        parts = urlsplit(server.url)
        sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        sock.sendall(_post(server.url, {"messages": LONG, "max_tokens": BIG, "n": 2, "temperature": 0}))
        wait(lambda: len(spy.streams) == 2, what="the request to start")
        sock.close()  # gone before any answer: noticed by polling the socket
        for seq in spy.streams:
            wait(lambda seq=seq: seq.done, what="the sequences to end")
            assert seq.cancelled and seq.result().completion_tokens < BIG


# ---- shutdown -----------------------------------------------------------------------------


@pytest.mark.real_model
def test_shutdown_lets_running_requests_finish_and_leaves_nothing(policy, recording, wait):
    before = set(threading.enumerate())
    spy = recording(policy)
    server = Server(spy).start()
    url = server.url
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
    assert client.models.list().data  # leaves an idle keep-alive connection in the client's pool
    out: dict[str, object] = {}

    def ask() -> None:
        try:
            chunks = client.chat.completions.create(
                model=server.model_name, messages=LONG, max_tokens=12, temperature=0, stream=True
            )
            out["text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        except Exception as e:
            out["error"] = e

    t = threading.Thread(target=ask)
    t.start()
    wait(lambda: spy.streams, what="the request to start")
    server.shutdown(grace=120)
    t.join(timeout=60)
    assert "error" not in out and out["text"]  # finished in full, within the grace period
    assert spy.streams[0].result().completion_tokens == 12 and not spy.streams[0].cancelled
    client.close()
    assert _refused(url)
    wait(lambda: not _new_threads(before), what=f"server threads to end: {_new_threads(before)}")
    server.shutdown()  # twice is fine


@pytest.mark.real_model
def test_shutdown_cancels_requests_past_the_grace(policy, recording, wait):
    before = set(threading.enumerate())
    spy = recording(policy)
    server = Server(spy).start()
    client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
    out: dict[str, BaseException] = {}

    def ask(name: str, stream: bool) -> None:
        try:
            reply = client.chat.completions.create(
                model=server.model_name, messages=LONG, max_tokens=BIG, temperature=0, stream=stream
            )
            if stream:
                list(reply)
        except Exception as e:
            out[name] = e

    threads = [threading.Thread(target=ask, args=(n, n == "stream")) for n in ("whole", "stream")]
    for t in threads:
        t.start()
    wait(lambda: len(spy.streams) == 2, what="both requests to start")
    server.shutdown(grace=0.2)
    for t in threads:
        t.join(timeout=60)
    assert isinstance(out.get("whole"), openai.APIStatusError) and out["whole"].status_code == 503
    assert isinstance(out.get("stream"), openai.APIError) and "shutting down" in str(out["stream"])
    assert all(s.cancelled and s.result().completion_tokens < BIG for s in spy.streams)
    client.close()
    assert _refused(server.url)
    wait(lambda: not _new_threads(before), what=f"server threads to end: {_new_threads(before)}")


def test_shutdown_without_start_and_context_manager():
    before = set(threading.enumerate())
    server = Server(types.SimpleNamespace(name="stub"))
    server.shutdown()
    assert _refused(server.url) and not _new_threads(before)
    with Server(types.SimpleNamespace(name="stub")) as s:
        assert openai.OpenAI(base_url=s.url, api_key="x").models.list().data[0].id == "stub"
    assert _refused(s.url)


# ---- overload and bugs (a stub policy: no model needed) -------------------------------------


class _Stub:
    """Just enough of a LocalPolicy for the server: ``stream`` does what the test says."""

    name = "stub"
    tokenizer = None

    def __init__(self, fail: BaseException | None = None, waiting: int = 0):
        self.fail = fail
        self.engine = types.SimpleNamespace(max_queue=4, max_top_logprobs=20, waiting=waiting)

    def stream(self, prompt, params, *, client=None, top_logprobs=0):
        if self.fail is not None:
            raise self.fail
        raise AssertionError("not reached in these tests")


def test_full_engine_queue_answers_503_with_retry_after(raw, error_of):
    body = {"messages": [{"role": "user", "content": "hi"}], "n": 2}
    with Server(_Stub(waiting=4)) as server:  # the queue is full right now: no submit at all
        status, headers, payload = raw(server.url, "POST", "/v1/chat/completions", body)
        assert status == 503 and headers["retry-after"] == "1" and error_of(payload)["code"] == "overloaded"
    full = BackendError("the engine queue is full (4 waiting) for 0.1 s; send fewer requests at once")
    with Server(_Stub(fail=full)) as server:  # submit itself gave up
        status, headers, payload = raw(server.url, "POST", "/v1/chat/completions", body)
        assert status == 503 and "retry-after" in headers and "queue is full" in error_of(payload)["message"]
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="stub", messages=body["messages"])


def test_unexpected_error_is_a_500_and_the_server_keeps_serving(raw, error_of, caplog):
    with Server(_Stub(fail=RuntimeError("boom"))) as server:
        status, _, payload = raw(
            server.url, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}
        )
        err = error_of(payload)
        assert status == 500 and err["type"] == "server_error" and "boom" in err["message"]
        assert "boom" in caplog.text  # logged with its traceback
        assert raw(server.url, "GET", "/v1/models")[0] == 200


# ---- the CLI ------------------------------------------------------------------------------


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
        status, _, body = raw(url, "POST", "/v1/chat/completions", {"messages": LONG, "max_tokens": 2})
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
