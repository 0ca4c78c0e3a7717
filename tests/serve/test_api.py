"""``ponder serve``'s API on ``ScriptedPolicy``: the official OpenAI client and raw HTTP over a real
socket, every endpoint and field, every error in OpenAI's shape. Milliseconds each, no model."""

from __future__ import annotations

import http.client
import socket
from urllib.parse import urlsplit

import openai
import pytest

from ponder.models import Prompt, SamplingParams
from ponder.serve import Server

QUESTION = "What is 2+2?"
MESSAGES = [{"role": "user", "content": QUESTION}]
ANSWER = "2 + 2 = 4. The answer is 4."


@pytest.fixture(scope="module")
def policy(scripted):
    return scripted()


@pytest.fixture(scope="module")
def server(policy):
    with Server(policy, model_name="scripted-model") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    c = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=30)
    yield c
    c.close()


def _chat(client, server, **kw):
    kw = {"model": server.model_name, "messages": MESSAGES, "max_tokens": 64, **kw}
    return client.chat.completions.create(**kw)


def _stream_text(chunks):
    """Per-choice text, finish reasons, the usage and roles of a streamed chat reply."""
    texts, finish, usage, roles = {}, {}, None, {}
    for ch in chunks:
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            if c.delta.role:
                roles[c.index] = c.delta.role
                assert c.index not in texts  # the role comes first
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    return texts, finish, usage, roles


# ---- models, health -----------------------------------------------------------------------


def test_models_list_and_health(server, client, raw):
    assert [m.id for m in client.models.list().data] == ["scripted-model"]
    assert client.models.retrieve("scripted-model").id == "scripted-model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    status, _, body = raw(server.url, "GET", "/health")
    assert status == 200 and body == {"status": "ok", "model": "scripted-model", "prm": None}
    assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v1")


# ---- chat ---------------------------------------------------------------------------------


def test_chat_answers_as_generate_does_and_counts_tokens(server, client, policy):
    reply = _chat(client, server)
    [[local]] = policy.generate([Prompt.chat(MESSAGES)], SamplingParams(max_tokens=64))
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == local.text == ANSWER
    assert choice.finish_reason == "stop" and reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-") and reply.model == server.model_name
    assert reply.usage.prompt_tokens == len(policy.encode(Prompt.chat(MESSAGES))) == local.prompt_tokens == 6
    assert reply.usage.completion_tokens == local.completion_tokens == 11
    assert reply.usage.total_tokens == 17


def test_chat_stream_equals_non_stream(server, client):
    whole = _chat(client, server)
    chunks = list(_chat(client, server, stream=True, stream_options={"include_usage": True}))
    texts, finish, usage, roles = _stream_text(chunks)
    assert texts == {0: ANSWER} and finish == {0: "stop"} and roles == {0: "assistant"}
    assert len(chunks) > 5  # word by word, not one piece
    assert chunks[-1].choices == [] and usage.model_dump() == whole.usage.model_dump()  # usage last, alone
    assert all(ch.usage is None for ch in chunks[:-1])
    assert {ch.id for ch in chunks} == {chunks[0].id} and chunks[0].object == "chat.completion.chunk"
    assert all(ch.usage is None for ch in _chat(client, server, stream=True))  # not asked: none


def test_text_parts_developer_role_and_nulls(server, client):
    parts = _chat(
        client,
        server,
        messages=[
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
        ],
        temperature=None,  # null means the default
    )
    assert parts.choices[0].message.content == ANSWER
    assert parts.usage.prompt_tokens == 6 + 3  # "Be brief." counts too


def test_continue_final_message_and_add_generation_prompt(server, raw, policy):
    partial = [*MESSAGES, {"role": "assistant", "content": "The answer is"}]
    body = {"messages": partial, "max_tokens": 6}
    status, _, cont = raw(
        server.url,
        "POST",
        "/v1/chat/completions",
        {**body, "continue_final_message": True, "add_generation_prompt": False},
    )
    assert status == 200 and cont["usage"]["prompt_tokens"] == len(
        policy.encode(Prompt.user(QUESTION, prefix="The answer is"))
    )
    assert policy.prompts[-1].assistant_prefix == "The answer is"
    status, _, _ = raw(server.url, "POST", "/v1/chat/completions", {**body, "add_generation_prompt": False})
    assert status == 200 and policy.prompts[-1].messages[-1].content == QUESTION + "\n\nThe answer is"
    status, _, _ = raw(
        server.url,
        "POST",
        "/v1/chat/completions",
        {**body, "continue_final_message": True, "add_generation_prompt": True},
    )
    assert status == 400


def test_n_seed_stop_and_length(server, client):
    reply = _chat(client, server, n=3, seed=7, temperature=1.0)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert {c.message.content for c in reply.choices} == {ANSWER}
    assert reply.usage.completion_tokens == 3 * 11 and reply.usage.prompt_tokens == 6  # the prompt once
    streamed, finish, _, roles = _stream_text(_chat(client, server, n=3, stream=True))
    assert streamed == {0: ANSWER, 1: ANSWER, 2: ANSWER} and set(finish) == set(roles) == {0, 1, 2}
    cut = _chat(client, server, stop=[" The", "never-seen"]).choices[0]
    assert cut.message.content == "2 + 2 = 4." and cut.finish_reason == "stop"
    assert cut.stop_reason == " The"  # vLLM's extra field
    texts, finish, _, _ = _stream_text(_chat(client, server, stop=" The", stream=True))
    assert texts == {0: "2 + 2 = 4."} and finish == {0: "stop"}
    short = _chat(client, server, max_tokens=4)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 4
    assert short.choices[0].message.content == "2 + 2 ="
    newer = _chat(client, server, max_tokens=None, max_completion_tokens=3)
    assert newer.choices[0].finish_reason == "length" and newer.usage.completion_tokens == 3


def test_a_policy_without_logprobs_says_so(server, client, raw, error_of):
    with pytest.raises(openai.BadRequestError) as e:
        _chat(client, server, logprobs=True, top_logprobs=2)
    assert e.value.param == "logprobs" and "gives no logprobs" in e.value.message
    status, _, body = raw(server.url, "POST", "/v1/completions", {"prompt": "x", "logprobs": 1})
    assert status == 400 and error_of(body)["param"] == "logprobs"
    status, _, body = raw(server.url, "POST", "/v1/completions", {"prompt": [1, 2, 3]})
    assert status == 400 and "token ids" in error_of(body)["message"]


# ---- completions --------------------------------------------------------------------------


def test_completions_both_ways(server, client):
    kw = {"model": server.model_name, "prompt": "Tell me a story", "max_tokens": 8}
    whole = client.completions.create(**kw)
    choice = whole.choices[0]
    assert whole.object == "text_completion" and choice.finish_reason == "length"
    assert choice.text == "Once upon a time there was a lighthouse"
    assert whole.usage.prompt_tokens == 4 and whole.usage.completion_tokens == 8
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert "".join(c.text for ch in chunks for c in ch.choices) == choice.text
    assert [c.finish_reason for ch in chunks for c in ch.choices if c.finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == 8
    assert client.completions.create(**{**kw, "prompt": ["Tell me a story"]}).choices[0].text == choice.text
    default = client.completions.create(model=server.model_name, prompt="Tell me a long story")
    assert default.usage.completion_tokens == 16  # OpenAI's default max_tokens for completions


# ---- bad requests -------------------------------------------------------------------------

GOOD = {"messages": MESSAGES, "max_tokens": 4}


@pytest.mark.parametrize(
    ("path", "body", "param", "words"),
    [
        ("/v1/chat/completions", b"{not json", None, "not valid JSON"),
        ("/v1/chat/completions", b"[1, 2]", None, "JSON object"),
        ("/v1/chat/completions", b"[" * 100_000 + b"]" * 100_000, None, "recursion limit"),
        ("/v1/chat/completions", {"max_tokens": 4}, "messages", "is required"),
        ("/v1/chat/completions", {"messages": []}, "messages", "is empty"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "tool", "content": "x"}]},
            "messages[0].role",
            "'user'",
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages[0].content", "is required"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            "string",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content",
            "only text parts",
        ),
        ("/v1/chat/completions", {**GOOD, "temperature": -1}, "temperature", "greater than or equal to 0"),
        ("/v1/chat/completions", {**GOOD, "temperature": "hot"}, "temperature", "valid number"),
        ("/v1/chat/completions", {**GOOD, "top_p": 0}, "top_p", "greater than 0"),
        ("/v1/chat/completions", {**GOOD, "n": 0}, "n", "greater than or equal to 1"),
        ("/v1/chat/completions", {**GOOD, "n": True}, "n", "valid integer"),
        ("/v1/chat/completions", {**GOOD, "n": 65}, "n", "at most 64"),
        ("/v1/chat/completions", {**GOOD, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ("/v1/chat/completions", {**GOOD, "max_tokens": "8"}, "max_tokens", "valid integer"),
        ("/v1/chat/completions", {**GOOD, "max_tokens": 10**6}, "max_tokens", "at most 4096"),
        ("/v1/chat/completions", {**GOOD, "stop": [""]}, "stop", "empty string"),
        ("/v1/chat/completions", {**GOOD, "stop": 3}, "stop", "list of strings"),
        ("/v1/chat/completions", {**GOOD, "stop": ["x"] * 17}, "stop", "at most 16"),
        ("/v1/chat/completions", {**GOOD, "seed": 2**64}, "seed", "64 bits"),
        ("/v1/chat/completions", {**GOOD, "top_logprobs": 2}, "top_logprobs", "logprobs=true"),
        (
            "/v1/chat/completions",
            {**GOOD, "logprobs": True, "top_logprobs": 99},
            "top_logprobs",
            "at most 20",
        ),
        ("/v1/chat/completions", {**GOOD, "stream": "yes"}, "stream", "valid boolean"),
        ("/v1/chat/completions", {**GOOD, "stream_options": 1}, "stream_options", "an object"),
        ("/v1/chat/completions", {**GOOD, "user": ["x"]}, "user", "valid string"),
        ("/v1/chat/completions", {**GOOD, "tools": [{"type": "function"}]}, "tools", "not supported"),
        ("/v1/chat/completions", {**GOOD, "presence_penalty": 0.5}, "presence_penalty", "not supported"),
        ("/v1/chat/completions", {**GOOD, "best_of": 2}, "best_of", "not supported"),
        (
            "/v1/chat/completions",
            {**GOOD, "continue_final_message": True},
            "messages",
            "end with an assistant",
        ),
        ("/v1/completions", {"max_tokens": 4}, "prompt", "is required"),
        ("/v1/completions", {"prompt": ["a", "b"]}, "prompt", "one per request"),
        ("/v1/completions", {"prompt": ""}, "prompt", "non-empty"),
        ("/v1/completions", {"prompt": "x", "echo": True}, "echo", "not supported"),
        ("/v1/completions", {"prompt": "x", "logprobs": -1}, "logprobs", ">= 0"),
    ],
)
def test_bad_request_gets_a_400_naming_the_field(server, raw, error_of, path, body, param, words):
    status, _, payload = raw(server.url, "POST", path, body)
    err = error_of(payload)
    assert status == 400 and err["type"] == "invalid_request_error", err
    assert err["param"] == param and words in err["message"], err
    if param:
        assert param.split("[")[0] in err["message"], err  # the message names the field


def test_errors_by_status(server, raw, error_of):
    status, _, body = raw(server.url, "POST", "/v1/chat/completions", {**GOOD, "model": "gpt-4"})
    assert status == 404 and error_of(body)["code"] == "model_not_found"
    status, _, body = raw(server.url, "POST", "/v1/nothing", GOOD)
    assert status == 404 and error_of(body)["code"] == "not_found"
    status, headers, body = raw(server.url, "GET", "/v1/chat/completions")
    assert status == 405 and headers["allow"] == "POST" and error_of(body)["code"] == "method_not_allowed"
    status, _, body = raw(server.url, "DELETE", "/v1/models")
    assert status == 405 and error_of(body)
    status, _, body = raw(server.url, "POST", "/v1/prm/score", {"question": "q", "steps": [["a"]]})
    assert status == 404 and "--prm" in error_of(body)["message"]  # no PRM on this server
    status, _, body = raw(server.url, "GET", "/v1/models", headers={"host": "evil.example"})
    assert status == 400 and error_of(body)["code"] == "bad_host"


def test_connection_survives_errors(server, raw):
    """Error answers leave the keep-alive connection usable."""
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        assert raw(server.url, "POST", "/v1/nowhere", {"x": "y" * 1000}, conn=conn)[0] == 404
        assert raw(server.url, "POST", "/v1/models", {"x": 1}, conn=conn)[0] == 405
        assert raw(server.url, "POST", "/v1/chat/completions", {**GOOD, "n": 0}, conn=conn)[0] == 400
        status, _, body = raw(server.url, "POST", "/v1/chat/completions", GOOD, conn=conn)
        assert status == 200 and body["choices"][0]["message"]["content"] == "2 + 2 ="
    finally:
        conn.close()


def test_body_limits(policy, raw, error_of):
    with Server(policy, max_body_bytes=2048, body_timeout=0.5) as small:
        status, headers, body = raw(small.url, "POST", "/v1/chat/completions", {**GOOD, "pad": "x" * 10_000})
        assert status == 413 and error_of(body)["code"] == "body_too_large"
        assert headers.get("connection") == "close"
        # chunked, without a length: counted as it comes
        parts = urlsplit(small.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("POST", "/v1/chat/completions", body=iter([b"{" + b" " * 1500, b" " * 1500 + b"}"]),
                     headers={"content-type": "application/json"}, encode_chunked=True)  # fmt: skip
        reply = conn.getresponse()
        assert reply.status == 413 and b"body_too_large" in reply.read()
        conn.close()
        # a body slower than body_timeout: 408
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{"
            )
            head = sock.recv(65536)
        assert b" 408 " in head.split(b"\r\n", 1)[0] and b"request_timeout" in head
        assert raw(small.url, "POST", "/v1/chat/completions", GOOD)[0] == 200  # still serving


def test_client_raises_typed_errors(server, client):
    with pytest.raises(openai.BadRequestError) as e:
        _chat(client, server, temperature=-1)
    assert e.value.status_code == 400 and e.value.param == "temperature"
    with pytest.raises(openai.NotFoundError) as e:
        _chat(client, server, model="no-such-model")
    assert e.value.code == "model_not_found"


def test_openai_policy_through_the_server(server, policy):
    from ponder.models.openai_policy import OpenAIPolicy

    remote = OpenAIPolicy(model=server.model_name, base_url=server.url, max_retries=0)
    try:
        prefixed = Prompt.user(QUESTION, prefix="So")  # sent as continue_final_message
        [[got]] = remote.generate([prefixed], SamplingParams(max_tokens=8))
        [[want]] = policy.generate([prefixed], SamplingParams(max_tokens=8))
        assert (got.text, got.completion_tokens, got.prompt_tokens) == (
            want.text,
            want.completion_tokens,
            want.prompt_tokens,
        )
        rows = remote.generate(
            [Prompt.user(QUESTION)], SamplingParams(n=3, max_tokens=6, temperature=1, seed=3)
        )
        assert [c.text for c in rows[0]] == ["2 + 2 = 4."] * 3
        [[cut]] = remote.generate([Prompt.user(QUESTION)], SamplingParams(stop=(" The",)))
        assert (cut.text, cut.finish_reason, cut.stop_reason) == ("2 + 2 = 4.", "stop", " The")
    finally:
        remote.close()
    plain = OpenAIPolicy(model=server.model_name, base_url=server.url, use_chat=False, max_retries=0)
    try:
        [[c]] = plain.generate([Prompt.user(QUESTION)], SamplingParams(max_tokens=4))
        assert c.completion_tokens == 4 and c.finish_reason == "length"
    finally:
        plain.close()


def test_only_a_streaming_policy_is_served():
    from ponder.errors import ConfigError
    from ponder.models.openai_policy import OpenAIPolicy

    with pytest.raises(ConfigError, match="cannot stream"):
        Server(OpenAIPolicy(model="m", base_url="http://127.0.0.1:9/v1"))


def test_a_server_shutting_down_answers_503_in_process(policy, error_of):
    """Through the ASGI test client (no socket): once shutdown has begun, generation is refused."""
    from fastapi.testclient import TestClient

    server = Server(policy)
    server.shutdown()
    with TestClient(server.app, base_url="http://127.0.0.1") as http:
        reply = http.post("/v1/chat/completions", json=GOOD)
        assert reply.status_code == 503 and reply.headers["retry-after"] == "5"
        assert "shutting down" in error_of(reply.json())["message"]
        assert http.get("/v1/models").status_code == 200  # reading still works
