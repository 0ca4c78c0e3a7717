"""OpenAIPolicy against a real HTTP server on 127.0.0.1 that mimics vLLM's OpenAI API."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ponder.errors import BackendError, ConfigError
from ponder.models import Prompt, SamplingParams
from ponder.models.openai_policy import (
    OpenAIPolicy,
    _Choice,
    _split_completion_tokens,
    default_prompt_formatter,
)


class FakeVLLM:
    """A small vLLM look-alike: /v1/chat/completions, /v1/completions, /v1/models.

    Replies are deterministic: choice ``i`` of a request is ``"reply {i} to {last message}"``
    (for a chat continuing an assistant prefix: ``" continued {i}"``), one token per
    whitespace-separated piece, cut at ``max_tokens`` pieces (finish ``"length"``).

    Knobs:
        actions: a queue of per-request behaviours, consumed in order: ``"401"``,
            ``"429"`` (with ``retry-after-ms: 10``), ``"500"``, ``"slow"`` (sleeps
            ``slow_s`` before answering). Empty queue: answer normally.
        api_key: if set, any other bearer token gets vLLM's 401.
        models: served model names; others get vLLM's 404 error JSON.
        honor_stop: apply ``stop`` server-side (False: leave it to the client).
        usage: include ``usage`` in replies.
        max_n: return at most this many choices (llama.cpp ignores ``n``).
        reject_max_tokens: answer ``max_tokens`` with OpenAI's reasoning-model 400.
        reject_continue: answer ``continue_final_message`` with OpenAI's 400.
        delay_marker: a user text containing ``sleep=X`` sleeps X seconds first.
    """

    def __init__(self) -> None:
        self.actions: deque[str] = deque()
        self.api_key: str | None = None
        self.models = ["fake-model"]
        self.honor_stop = False
        self.usage = True
        self.max_n: int | None = None
        self.reject_max_tokens = False
        self.reject_continue = False
        self.slow_s = 2.0
        self.requests: list[dict[str, Any]] = []
        self.inflight = 0
        self.max_inflight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    data = [{"id": m, "object": "model"} for m in fake.models]
                    self._send(200, {"object": "list", "data": data})
                else:
                    self._send(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    fake.requests.append(
                        {"path": self.path, "body": body, "auth": self.headers.get("authorization")}
                    )
                    fake.inflight += 1
                    fake.max_inflight = max(fake.max_inflight, fake.inflight)
                    action = fake.actions.popleft() if fake.actions else None
                try:
                    status, payload, headers = fake.respond(self.path, body, self.headers, action)
                    self._send(status, payload, headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with fake._lock:
                        fake.inflight -= 1

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> FakeVLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def error(status: int, message: str, kind: str) -> dict[str, Any]:
        return {"object": "error", "message": message, "type": kind, "param": None, "code": status}

    def respond(self, path: str, body: dict[str, Any], headers: Any, action: str | None):
        if action == "slow":
            time.sleep(self.slow_s)
        if action == "401" or (self.api_key and headers.get("authorization") != f"Bearer {self.api_key}"):
            return 401, {"error": "Unauthorized"}, {}
        if action == "429":
            return 429, self.error(429, "Too many requests", "RateLimitError"), {"retry-after-ms": "10"}
        if action == "500":
            return 500, self.error(500, "CUDA out of memory", "InternalServerError"), {}
        if body.get("model") not in self.models:
            return (
                404,
                self.error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError"),
                {},
            )
        if self.reject_max_tokens and "max_tokens" in body:
            msg = "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
            return (
                400,
                {"error": {"message": msg, "type": "invalid_request_error", "param": "max_tokens"}},
                {},
            )
        if self.reject_continue and "continue_final_message" in body:
            msg = "Unrecognized request argument supplied: continue_final_message"
            return 400, {"error": {"message": msg, "type": "invalid_request_error"}}, {}
        chat = path == "/v1/chat/completions"
        if not chat and path != "/v1/completions":
            return 404, {"detail": "Not Found"}, {}
        if chat:
            msgs = body["messages"]
            source = msgs[-1]["content"]
            prompt_text = " ".join(m["content"] for m in msgs)
        else:
            source = prompt_text = body["prompt"]
        if "sleep=" in prompt_text:
            time.sleep(float(prompt_text.split("sleep=")[1].split()[0]))
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or 16
        continuing = chat and body.get("continue_final_message")
        n = body.get("n") or 1
        if self.max_n is not None:
            n = min(n, self.max_n)
        choices, total = [], 0
        for i in range(n):
            full = f" continued {i}" if continuing else f"reply {i} to {source}"
            pieces = full.split(" ")
            tokens = [p if k == 0 else " " + p for k, p in enumerate(pieces)]
            finish = "stop"
            if len(tokens) > limit:
                tokens, finish = tokens[:limit], "length"
            text = "".join(tokens)
            if self.honor_stop:
                for s in body.get("stop") or []:
                    if s in text:
                        text, finish = text[: text.index(s)], "stop"
            total += len(tokens)
            lps = [-0.5 * (k + 1) for k in range(len(tokens))]
            if chat:
                choice: dict[str, Any] = {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "stop_reason": None,
                }
                if body.get("logprobs"):
                    content = [
                        {"token": t, "logprob": lp, "bytes": None, "top_logprobs": []}
                        for t, lp in zip(tokens, lps, strict=True)
                    ]
                    choice["logprobs"] = {"content": content}
            else:
                choice = {"index": i, "text": text, "finish_reason": finish, "logprobs": None}
                if body.get("logprobs") is not None:
                    choice["logprobs"] = {
                        "tokens": tokens,
                        "token_logprobs": lps,
                        "text_offset": [],
                        "top_logprobs": [],
                    }
            choices.append(choice)
        reply: dict[str, Any] = {
            "id": f"cmpl-{len(self.requests)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": 0,
            "model": body["model"],
            "choices": choices,
        }
        if self.usage:
            p_tok = len(prompt_text.split())
            reply["usage"] = {
                "prompt_tokens": p_tok,
                "completion_tokens": total,
                "total_tokens": p_tok + total,
            }
        return 200, reply, {}


@pytest.fixture
def server():
    with FakeVLLM() as s:
        yield s


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("PONDER_OPENAI_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY", "PONDER_OPENAI_MODEL"):
        monkeypatch.delenv(var, raising=False)


def make(server: FakeVLLM, **kw: Any) -> OpenAIPolicy:
    kw.setdefault("timeout", 5.0)
    return OpenAIPolicy("fake-model", base_url=server.url, **kw)


def texts(rows):
    return [[c.text for c in row] for row in rows]


def test_batch_order_n_and_usage(server):
    policy = make(server)
    prompts = [Prompt.user(f"question {i}") for i in range(5)]
    rows = policy.generate(prompts, SamplingParams(n=3, max_tokens=50))
    assert texts(rows) == [[f"reply {j} to question {i}" for j in range(3)] for i in range(5)]
    for row in rows:
        # the server bills 5 tokens per choice and 2 for the prompt
        assert [(c.prompt_tokens, c.completion_tokens, c.finish_reason) for c in row] == [(2, 5, "stop")] * 3
        assert all(c.logprobs is None for c in row)
    assert policy.usage.as_dict() == {"prompt_tokens": 10, "completion_tokens": 75, "calls": 1}
    assert len(server.requests) == 5
    # requests run concurrently and arrive in any order
    sent = next(r["body"] for r in server.requests if r["body"]["messages"][0]["content"] == "question 0")
    assert sent["n"] == 3 and sent["max_tokens"] == 50 and "max_completion_tokens" not in sent
    assert sent["messages"] == [{"role": "user", "content": "question 0"}]
    assert sent["temperature"] == 0.0 and sent["top_p"] == 1.0
    assert server.requests[0]["auth"] == "Bearer EMPTY"  # local server, no key configured
    assert policy.requests == 5 and policy.retries == 0


def test_order_preserved_under_concurrency_and_limit(server):
    policy = make(server, max_concurrency=2)
    delays = [0.3, 0.1, 0.2, 0.0, 0.15, 0.05]
    prompts = [Prompt.user(f"q{i} sleep={d}") for i, d in enumerate(delays)]
    rows = policy.generate(prompts, SamplingParams())
    assert [row[0].text for row in rows] == [f"reply 0 to q{i} sleep={d}" for i, d in enumerate(delays)]
    assert server.max_inflight == 2


def test_length_finish_and_sampling_fields(server):
    policy = make(server)
    params = SamplingParams(max_tokens=3, temperature=0.7, top_p=0.9, seed=11)
    [[c]] = policy.generate([Prompt.user("a long question here")], params)
    assert (c.text, c.finish_reason, c.completion_tokens) == ("reply 0 to", "length", 3)
    sent = server.requests[0]["body"]
    assert (sent["temperature"], sent["top_p"], sent["seed"]) == (0.7, 0.9, 11)


def test_stop_applied_client_side_and_sent(server):
    policy = make(server)
    params = SamplingParams(n=2, stop=("to",), max_tokens=3)
    rows = policy.generate([Prompt.user("x y")], params)
    assert texts(rows) == [["reply 0 ", "reply 1 "]]
    # the cut, not the token limit, ended the text
    assert [c.finish_reason for c in rows[0]] == ["stop", "stop"]
    assert [c.completion_tokens for c in rows[0]] == [3, 3]  # what the server generated
    assert server.requests[0]["body"]["stop"] == ["to"]
    server.honor_stop = True
    assert texts(policy.generate([Prompt.user("x y")], params)) == [["reply 0 ", "reply 1 "]]


def test_too_many_stop_strings_is_config_error(server):
    with pytest.raises(ConfigError, match="at most 4 stop strings, got 5"):
        make(server).generate([Prompt.user("x")], SamplingParams(stop=("a", "b", "c", "d", "e")))
    assert server.requests == []


def test_logprobs_extracted_and_cut_with_stop(server):
    policy = make(server)
    [[c]] = policy.generate([Prompt.user("hi")], SamplingParams(logprobs=True))
    assert c.text == "reply 0 to hi"
    assert c.logprobs == (-0.5, -1.0, -1.5, -2.0)
    assert server.requests[0]["body"]["logprobs"] is True
    [[c]] = policy.generate([Prompt.user("hi")], SamplingParams(logprobs=True, stop=(" to",)))
    assert c.text == "reply 0" and c.logprobs == (-0.5, -1.0)


def test_usage_split_per_choice(server):
    policy = make(server)
    # the server bills one total (8) for both choices; without logprobs it is split evenly
    rows = policy.generate([Prompt.user("a b")], SamplingParams(n=2, max_tokens=4))
    assert [c.completion_tokens for c in rows[0]] == [4, 4]
    # uneven totals: the remainder goes to the first choices, the row sums to the bill
    cs = [_Choice("a", "stop", None, None) for _ in range(3)]
    _split_completion_tokens(cs, 10)
    assert [c.completion_tokens for c in cs] == [4, 3, 3]
    # per-choice counts known from logprobs: exact
    cs = [_Choice("a b", "stop", ["a", " b"], [-1.0, -1.0]), _Choice("a", "stop", ["a"], [-1.0])]
    _split_completion_tokens(cs, 3)
    assert [c.completion_tokens for c in cs] == [2, 1]


def test_no_usage_counts_approximate_tokens(server):
    server.usage = False
    policy = make(server)
    [[c]] = policy.generate([Prompt.user("what is 2+2?")], SamplingParams())
    assert c.text == "reply 0 to what is 2+2?"
    assert c.prompt_tokens == 6  # what, is, 2, +, 2, ?
    assert c.completion_tokens == 9  # reply, 0, to, what, is, 2, +, 2, ?
    assert policy.usage.completion_tokens == 9


def test_assistant_prefix_sent_with_continue_final_message(server):
    policy = make(server, extra_body={"top_k": 5})
    prompt = Prompt.user("solve it", system="be brief", prefix="Step 1:")
    [[c]] = policy.generate([prompt], SamplingParams())
    assert c.text == " continued 0"
    body = server.requests[0]["body"]
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "solve it"},
        {"role": "assistant", "content": "Step 1:"},
    ]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["top_k"] == 5
    # without a prefix, no continuation flags
    policy.generate([Prompt.user("solve it")], SamplingParams())
    assert "continue_final_message" not in server.requests[1]["body"]


def test_prefix_on_server_without_continue_is_config_error(server):
    server.reject_continue = True
    with pytest.raises(ConfigError, match=r"does not support continuing an assistant prefix.*use_chat=False"):
        make(server).generate([Prompt.user("q", prefix="A:")], SamplingParams())


def test_completions_endpoint_with_default_and_custom_formatter(server):
    policy = make(server, use_chat=False)
    prompt = Prompt.user("2+2?", system="Be brief.", prefix="The answer")
    rows = policy.generate([prompt], SamplingParams(n=2, logprobs=True))
    req = server.requests[0]
    assert req["path"] == "/v1/completions"
    assert req["body"]["prompt"] == "System: Be brief.\n\nUser: 2+2?\n\nAssistant: The answer"
    assert req["body"]["prompt"] == default_prompt_formatter(prompt)
    assert req["body"]["logprobs"] == 1 and req["body"]["max_tokens"] == 256
    assert texts(rows)[0][0].startswith("reply 0 to System: Be brief.")
    assert rows[0][0].logprobs is not None and len(rows[0][0].logprobs) == rows[0][0].completion_tokens

    custom = make(server, use_chat=False, prompt_formatter=lambda p: "<|user|>" + p.messages[-1].content)
    [[c]] = custom.generate([Prompt.user("hey")], SamplingParams())
    assert server.requests[-1]["body"]["prompt"] == "<|user|>hey" and c.text == "reply 0 to <|user|>hey"


def test_fewer_choices_than_n_are_topped_up(server):
    server.max_n = 1  # like llama.cpp, which ignores n
    policy = make(server)
    rows = policy.generate([Prompt.user("q")], SamplingParams(n=3, seed=7))
    assert len(rows[0]) == 3
    assert [r["body"]["n"] for r in server.requests] == [3, 2, 1]
    assert [r["body"]["seed"] for r in server.requests] == [7, 8, 9]
    server.requests.clear()
    rows = asyncio.run(policy.agenerate([Prompt.user("q")], SamplingParams(n=5)))
    assert [c.text for c in rows[0]] == ["reply 0 to q"] * 5 and len(server.requests) == 5
    server.max_n = 0  # a server that returns no choices at all
    with pytest.raises(BackendError, match="returned 0 of 2 completions"):
        policy.generate([Prompt.user("q")], SamplingParams(n=2))


def test_max_completion_tokens_fallback(server):
    server.reject_max_tokens = True
    policy = make(server)
    [[c]] = policy.generate([Prompt.user("q")], SamplingParams(max_tokens=2))
    assert c.text == "reply 0" and c.finish_reason == "length"
    assert "max_tokens" in server.requests[0]["body"]
    assert server.requests[1]["body"]["max_completion_tokens"] == 2
    policy.generate([Prompt.user("q")], SamplingParams(max_tokens=2))
    assert "max_tokens" not in server.requests[2]["body"]  # remembered


def test_async_matches_sync(server):
    policy = make(server, max_concurrency=3)
    prompts = [Prompt.user(f"q{i}", prefix="P:" if i % 2 else "") for i in range(7)]
    params = SamplingParams(n=2, max_tokens=4, logprobs=True, stop=("3",))
    sync_rows = policy.generate(prompts, params)
    async_rows = asyncio.run(policy.agenerate(prompts, params))
    assert async_rows == sync_rows
    assert policy.usage.calls == 2
    assert policy.usage.completion_tokens == 2 * sum(c.completion_tokens for row in sync_rows for c in row)
    # a second event loop gets its own client
    assert asyncio.run(policy.agenerate(prompts[:2], params)) == sync_rows[:2]
    assert asyncio.run(policy.agenerate([], params)) == []


def test_async_concurrency_limit(server):
    policy = make(server, max_concurrency=2)
    prompts = [Prompt.user(f"q{i} sleep=0.15") for i in range(5)]
    rows = asyncio.run(policy.agenerate(prompts, SamplingParams()))
    assert [r[0].text for r in rows] == [f"reply 0 to q{i} sleep=0.15" for i in range(5)]
    assert server.max_inflight == 2


def test_env_config(server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # loses to the PONDER_ one
    monkeypatch.setenv("PONDER_OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("PONDER_OPENAI_MODEL", "fake-model")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    server.api_key = "sk-secret-123"
    policy = OpenAIPolicy()
    [[c]] = policy.generate([Prompt.user("hi")], SamplingParams())
    assert c.text == "reply 0 to hi"
    assert server.requests[0]["auth"] == "Bearer sk-secret-123"
    desc = policy.describe()
    assert desc["name"] == "openai" and desc["model"] == "fake-model" and desc["base_url"] == server.url
    assert "sk-secret-123" not in json.dumps(desc) + repr(policy)
    assert "api_key" not in desc


def test_missing_model_or_key_is_config_error(monkeypatch):
    with pytest.raises(ConfigError, match="PONDER_OPENAI_MODEL"):
        OpenAIPolicy(base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match="set OPENAI_API_KEY or --api-key"):
        OpenAIPolicy("gpt-4o-mini")
    with pytest.raises(ConfigError, match="max_concurrency"):
        OpenAIPolicy("m", base_url="http://127.0.0.1:9/v1", max_concurrency=0)


def test_bad_key_is_config_error(server):
    server.api_key = "right"
    with pytest.raises(ConfigError) as e:
        make(server, api_key="wrong").generate([Prompt.user("q")], SamplingParams())
    msg = str(e.value)
    assert f"the server at {server.url} refused the API key (HTTP 401)" in msg
    assert "set OPENAI_API_KEY or --api-key" in msg and "wrong" not in msg and "\n" not in msg


def test_unknown_model_is_config_error(server):
    policy = OpenAIPolicy("no-such-model", base_url=server.url, timeout=5)
    with pytest.raises(ConfigError) as e:
        policy.generate([Prompt.user("q")], SamplingParams())
    msg = str(e.value)
    assert "model 'no-such-model' is not served at" in msg
    assert f"curl {server.url}/models" in msg and "--model" in msg


def test_wrong_path_404_is_config_error(server):
    policy = OpenAIPolicy("fake-model", base_url=server.url.removesuffix("/v1") + "/v2", timeout=5)
    with pytest.raises(ConfigError, match=r"/v2/chat/completions does not exist.*ends in /v1"):
        policy.generate([Prompt.user("q")], SamplingParams())


def test_rate_limit_is_retried_and_counted(server):
    server.actions.extend(["429", "429"])
    policy = make(server, max_retries=2)
    [[c]] = policy.generate([Prompt.user("q")], SamplingParams())
    assert c.text == "reply 0 to q"
    assert len(server.requests) == 3
    assert (policy.requests, policy.retries) == (1, 2)
    assert policy.usage.calls == 1


def test_rate_limit_exhausted_is_backend_error(server):
    server.actions.extend(["429", "429"])
    with pytest.raises(
        BackendError, match=r"rate-limiting requests \(HTTP 429\) after 1 retry.*--max-concurrency"
    ):
        make(server, max_retries=1).generate([Prompt.user("q")], SamplingParams())
    assert len(server.requests) == 2


def test_server_error_is_backend_error(server):
    server.actions.append("500")
    with pytest.raises(
        BackendError, match=r"failed \(HTTP 500\): CUDA out of memory; check the server's log"
    ):
        make(server, max_retries=0).generate([Prompt.user("q")], SamplingParams())


def test_timeout_is_backend_error_and_retried(server):
    server.actions.extend(["slow", "slow"])
    server.slow_s = 1.5
    policy = make(server, timeout=0.3, max_retries=1)
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"did not answer within 0\.3 s after 1 retry; raise --timeout"):
        policy.generate([Prompt.user("q")], SamplingParams())
    assert time.monotonic() - start < 1.5
    assert len(server.requests) == 2


def test_timeout_async(server):
    server.actions.append("slow")
    server.slow_s = 1.5
    policy = make(server, timeout=0.3, max_retries=0)
    with pytest.raises(BackendError, match=r"did not answer within 0\.3 s"):
        asyncio.run(policy.agenerate([Prompt.user("q")], SamplingParams()))


def test_connection_refused_is_backend_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    policy = OpenAIPolicy("m", base_url=url, max_retries=0, timeout=2)
    with pytest.raises(BackendError, match=rf"cannot reach {url}; is the server running\?"):
        policy.generate([Prompt.user("q")], SamplingParams())
    with pytest.raises(BackendError, match="cannot reach"):
        asyncio.run(policy.agenerate([Prompt.user("q")], SamplingParams()))


def test_error_in_batch_propagates_and_no_usage_recorded(server):
    server.actions.append("500")
    policy = make(server, max_retries=0)
    with pytest.raises(BackendError):
        policy.generate([Prompt.user(f"q{i}") for i in range(4)], SamplingParams())
    assert policy.usage.calls == 0


def test_lazy_export():
    import ponder.models

    assert ponder.models.OpenAIPolicy is OpenAIPolicy


def test_context_manager_and_close(server):
    with make(server) as policy:
        assert (
            asyncio.run(policy.agenerate([Prompt.user("q")], SamplingParams()))[0][0].text == "reply 0 to q"
        )
        assert policy.generate([Prompt.user("q")], SamplingParams())[0][0].text == "reply 0 to q"
        policy.close()
        assert policy.generate([Prompt.user("q")], SamplingParams())[0][0].text == "reply 0 to q"  # reopens
    assert policy._sync_client is None
