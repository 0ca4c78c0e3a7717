"""``ponder serve`` with the real SmolLM2 policy, through the official OpenAI client and raw HTTP."""

from __future__ import annotations

import http.client
import socket
import threading
from urllib.parse import urlsplit

import openai
import pytest

from ponder.models import Prompt, SamplingParams
from ponder.serve import Server

pytestmark = pytest.mark.real_model

QUESTION = "What is 2+2?"
MESSAGES = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def server(policy):
    with Server(policy) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    c = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=120)
    yield c
    c.close()


def _chat(client, server, **kw):
    kw = {"model": server.model_name, "messages": MESSAGES, "max_tokens": 12, "temperature": 0, **kw}
    return client.chat.completions.create(**kw)


def _stream_text(chunks):
    """Per-choice text, finish reasons and the usage of a streamed chat reply."""
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
    assert [m.id for m in client.models.list().data] == [server.model_name]
    assert client.models.retrieve(server.model_name).id == server.model_name
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    status, _, body = raw(server.url, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["model"] == server.model_name
    assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v1")


# ---- chat ---------------------------------------------------------------------------------


def test_chat_greedy_equals_generate_and_counts_tokens(server, client, policy):
    reply = _chat(client, server)
    prompt = Prompt.chat(MESSAGES)
    [[local]] = policy.generate([prompt], SamplingParams(max_tokens=12))
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == local.text and local.text.strip()
    assert choice.finish_reason == local.finish_reason
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == server.model_name and isinstance(reply.created, int)
    assert reply.usage.prompt_tokens == len(policy.encode(prompt)) == local.prompt_tokens
    assert reply.usage.completion_tokens == local.completion_tokens
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_stream_equals_non_stream(server, client):
    whole = _chat(client, server)
    chunks = list(_chat(client, server, stream=True, stream_options={"include_usage": True}))
    texts, finish, usage, roles = _stream_text(chunks)
    assert texts == {0: whole.choices[0].message.content}
    assert finish == {0: whole.choices[0].finish_reason} and roles == {0: "assistant"}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None  # usage comes last, alone
    assert all(ch.usage is None for ch in chunks[:-1])
    assert usage.model_dump() == whole.usage.model_dump()
    assert {ch.id for ch in chunks} == {chunks[0].id} and chunks[0].object == "chat.completion.chunk"
    # without include_usage: no usage anywhere
    assert all(ch.usage is None for ch in _chat(client, server, stream=True))


def test_text_parts_and_system_message(server, client):
    plain = _chat(client, server, messages=[{"role": "system", "content": "Be brief."}, *MESSAGES])
    parts = _chat(
        client,
        server,
        messages=[
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
        ],
    )
    assert parts.choices[0].message.content == plain.choices[0].message.content


def test_continue_final_message_and_add_generation_prompt(server, raw, policy):
    partial = [*MESSAGES, {"role": "assistant", "content": "The answer is"}]
    body = {"messages": partial, "max_tokens": 6, "temperature": 0}
    status, _, cont = raw(
        server.url,
        "POST",
        "/v1/chat/completions",
        {**body, "continue_final_message": True, "add_generation_prompt": False},
    )
    prefixed = Prompt.user(QUESTION, prefix="The answer is")
    [[want]] = policy.generate([prefixed], SamplingParams(max_tokens=6))
    assert status == 200 and cont["choices"][0]["message"]["content"] == want.text
    assert cont["usage"]["prompt_tokens"] == len(policy.encode(prefixed))
    # add_generation_prompt=false alone: the conversation rendered as is (the assistant turn closed)
    status, _, closed = raw(
        server.url, "POST", "/v1/chat/completions", {**body, "add_generation_prompt": False}
    )
    text = policy.tokenizer.apply_chat_template(partial, tokenize=False, add_generation_prompt=False)
    assert status == 200 and closed["usage"]["prompt_tokens"] == len(policy.encode(text))
    status, _, _ = raw(
        server.url,
        "POST",
        "/v1/chat/completions",
        {**body, "continue_final_message": True, "add_generation_prompt": True},
    )
    assert status == 400


def test_n_with_seed_reproduces(server, client):
    kw = {"n": 3, "temperature": 1.0, "seed": 7, "max_tokens": 8}
    a, b = _chat(client, server, **kw), _chat(client, server, **kw)
    texts = [c.message.content for c in a.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in b.choices]
    assert len(set(texts)) > 1  # three samples, not one repeated
    assert a.usage.completion_tokens <= 3 * 8 and a.usage.prompt_tokens == b.usage.prompt_tokens
    # the same seeded samples, streamed: interleaved chunks, one index each
    streamed, finish, _, roles = _stream_text(_chat(client, server, stream=True, **kw))
    assert [streamed[i] for i in range(3)] == texts
    assert set(finish) == set(roles) == {0, 1, 2}


def test_stop_cuts_and_finishes_with_stop(server, client):
    full = _chat(client, server, max_tokens=16).choices[0].message.content
    words = full.split(" ")
    assert len(words) > 3, full
    stop = " " + words[2]
    reply = _chat(client, server, max_tokens=16, stop=[stop, "never-seen"])
    choice = reply.choices[0]
    assert choice.message.content == full[: full.index(stop)]
    assert choice.finish_reason == "stop" and choice.stop_reason == stop  # vLLM's extra field
    texts, finish, _, _ = _stream_text(_chat(client, server, max_tokens=16, stop=stop, stream=True))
    assert texts == {0: full[: full.index(stop)]} and finish == {0: "stop"}


def test_max_tokens_gives_length(server, client):
    reply = _chat(client, server, max_tokens=4, messages=[{"role": "user", "content": "Write a long story."}])
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 4
    newer = _chat(client, server, max_tokens=None, max_completion_tokens=3)
    assert newer.choices[0].finish_reason == "length" and newer.usage.completion_tokens == 3


def test_chat_logprobs(server, client, policy):
    reply = _chat(client, server, max_tokens=6, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 6
    [[local]] = policy.generate([Prompt.chat(MESSAGES)], SamplingParams(max_tokens=6, logprobs=True))
    assert [t.logprob for t in content] == pytest.approx(list(local.logprobs), abs=1e-4)
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        tops = [x.logprob for x in t.top_logprobs]
        assert tops == sorted(tops, reverse=True) and all(x <= 0 for x in tops)
        assert t.top_logprobs[0].token == t.token  # greedy: the chosen token is the most likely
        assert bytes(t.bytes).decode("utf-8", errors="replace") == t.token
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    # streamed: the same tokens, spread over the chunks
    streamed = [
        t.token
        for ch in _chat(client, server, max_tokens=6, logprobs=True, stream=True)
        for c in ch.choices
        if c.logprobs is not None
        for t in c.logprobs.content
    ]
    assert streamed == [t.token for t in content]


# ---- completions --------------------------------------------------------------------------


def test_completions_both_ways(server, client, policy):
    kw = {"model": server.model_name, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}
    whole = client.completions.create(**kw)
    choice = whole.choices[0]
    assert whole.object == "text_completion" and choice.text.strip() and choice.finish_reason == "length"
    assert whole.usage.prompt_tokens == len(policy.encode("Once upon a time"))
    assert whole.usage.completion_tokens == 8
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert "".join(c.text for ch in chunks for c in ch.choices) == choice.text
    assert [c.finish_reason for ch in chunks for c in ch.choices if c.finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == 8
    # a list of one string, and token ids, are the same prompt
    assert client.completions.create(**{**kw, "prompt": ["Once upon a time"]}).choices[0].text == choice.text
    ids = policy.encode("Once upon a time")
    assert client.completions.create(**{**kw, "prompt": ids}).choices[0].text == choice.text


def test_completions_legacy_logprobs(server, client):
    reply = client.completions.create(
        model=server.model_name, prompt="Once upon a time", max_tokens=6, temperature=0, logprobs=2
    )
    lp = reply.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert all(x <= 0 for x in lp.token_logprobs)
    assert "".join(lp.tokens) == reply.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    for tok, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert (
            len(top) == 2 and top[tok] == pytest.approx(value) and max(top.values()) == pytest.approx(value)
        )


# ---- many clients at once -----------------------------------------------------------------


def test_32_concurrent_requests_all_finish(server, client):
    results: dict[int, object] = {}

    def ask(i: int) -> None:
        try:
            results[i] = _chat(
                client,
                server,
                max_tokens=6,
                messages=[{"role": "user", "content": f"Name a number above {i}."}],
            )
        except Exception as e:  # collected and reported below
            results[i] = e

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    errors = {i: r for i, r in results.items() if isinstance(r, Exception)}
    assert not errors and len(results) == 32
    for r in results.values():
        assert r.choices[0].finish_reason in ("stop", "length") and 1 <= r.usage.completion_tokens <= 6


# ---- bad requests -------------------------------------------------------------------------

GOOD = {"messages": MESSAGES, "max_tokens": 4}


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", b"{not json", 400, None),
        ("/v1/chat/completions", b"[1, 2]", 400, None),
        ("/v1/chat/completions", {"max_tokens": 4}, 400, "messages"),
        ("/v1/chat/completions", {"messages": []}, 400, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, 400, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            400,
            "messages[0].content",
        ),
        ("/v1/chat/completions", {**GOOD, "temperature": -1}, 400, "temperature"),
        ("/v1/chat/completions", {**GOOD, "temperature": "hot"}, 400, "temperature"),
        ("/v1/chat/completions", {**GOOD, "top_p": 0}, 400, "top_p"),
        ("/v1/chat/completions", {**GOOD, "n": 0}, 400, "n"),
        ("/v1/chat/completions", {**GOOD, "n": True}, 400, "n"),
        ("/v1/chat/completions", {**GOOD, "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/chat/completions", {**GOOD, "max_tokens": 10**6}, 400, "max_tokens"),
        ("/v1/chat/completions", {**GOOD, "stop": [""]}, 400, "stop"),
        ("/v1/chat/completions", {**GOOD, "stop": 3}, 400, "stop"),
        ("/v1/chat/completions", {**GOOD, "top_logprobs": 2}, 400, "top_logprobs"),
        ("/v1/chat/completions", {**GOOD, "logprobs": True, "top_logprobs": 99}, 400, "top_logprobs"),
        ("/v1/chat/completions", {**GOOD, "stream": "yes"}, 400, "stream"),
        ("/v1/chat/completions", {**GOOD, "tools": [{"type": "function"}]}, 400, "tools"),
        ("/v1/chat/completions", {**GOOD, "presence_penalty": 0.5}, 400, "presence_penalty"),
        ("/v1/chat/completions", {**GOOD, "continue_final_message": True}, 400, "messages"),
        ("/v1/completions", {"max_tokens": 4}, 400, "prompt"),
        ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt"),
        ("/v1/completions", {"prompt": [10**9]}, 400, "prompt"),
        ("/v1/completions", {"prompt": "x", "echo": True}, 400, "echo"),
        ("/v1/completions", {"prompt": "x", "logprobs": -1}, 400, "logprobs"),
        ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ],
)
def test_bad_request_gets_400(server, raw, error_of, path, body, status, param):
    got, _, payload = raw(server.url, "POST", path, body)
    err = error_of(payload)
    assert got == status, err
    assert err["type"] == "invalid_request_error" and err["param"] == param


def test_errors_by_status(server, raw, error_of):
    status, _, body = raw(server.url, "POST", "/v1/chat/completions", {**GOOD, "model": "gpt-4"})
    assert status == 404 and error_of(body)["code"] == "model_not_found"
    status, _, body = raw(server.url, "POST", "/v1/nothing", GOOD)
    assert status == 404 and error_of(body)["code"] == "not_found"
    status, headers, body = raw(server.url, "GET", "/v1/chat/completions")
    assert status == 405 and headers["allow"] == "POST" and error_of(body)
    status, _, body = raw(server.url, "DELETE", "/v1/models")
    assert status == 405 and error_of(body)
    status, _, body = raw(server.url, "POST", "/v1/prm/score", {"question": "q", "steps": [["a"]]})
    assert status == 404 and "--prm" in error_of(body)["message"]  # no PRM on this server
    status, _, body = raw(server.url, "GET", "/v1/models", headers={"host": "evil.example"})
    assert status == 400 and error_of(body)["code"] == "bad_host"


def test_connection_survives_errors(server, raw):
    """Error answers drain the request body, so the keep-alive connection stays usable."""
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        assert raw(server.url, "POST", "/v1/nowhere", {"x": "y" * 1000}, conn=conn)[0] == 404
        assert raw(server.url, "POST", "/v1/models", {"x": 1}, conn=conn)[0] == 405
        assert raw(server.url, "POST", "/v1/chat/completions", {**GOOD, "n": 0}, conn=conn)[0] == 400
        status, _, body = raw(server.url, "POST", "/v1/chat/completions", GOOD, conn=conn)
        assert status == 200 and body["choices"][0]["message"]["content"]
    finally:
        conn.close()


def test_body_limits(policy, raw, error_of):
    with Server(policy, max_body_bytes=2048) as small:
        status, headers, body = raw(small.url, "POST", "/v1/chat/completions", {**GOOD, "pad": "x" * 10_000})
        assert status == 413 and error_of(body)["code"] == "body_too_large"
        assert headers.get("connection") == "close"
        # no Content-Length at all: 411
        parts = urlsplit(small.url)
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = sock.recv(65536).split(b"\r\n", 1)[0]
        assert b" 411 " in head
        # still serving
        assert raw(small.url, "POST", "/v1/chat/completions", GOOD)[0] == 200


def test_client_raises_typed_errors(server, client):
    with pytest.raises(openai.BadRequestError) as e:
        _chat(client, server, temperature=-1)
    assert e.value.status_code == 400 and "temperature" in e.value.message
    with pytest.raises(openai.BadRequestError):
        _chat(client, server, n=0)
    with pytest.raises(openai.NotFoundError) as e:
        _chat(client, server, model="no-such-model")
    assert e.value.code == "model_not_found"
    # a request without a model is served by the one model
    reply = client.chat.completions.create(model=server.model_name, messages=MESSAGES, max_tokens=2)
    assert reply.choices[0].message.content is not None


# ---- ponder's own client and LangChain ------------------------------------------------------


def test_openai_policy_through_the_server(server, policy):
    from ponder.models.openai_policy import OpenAIPolicy

    remote = OpenAIPolicy(model=server.model_name, base_url=server.url, max_retries=0)
    try:
        prefixed = Prompt.user("What is 2+2?", prefix="The answer is")  # continue_final_message
        params = SamplingParams(max_tokens=8, logprobs=True)
        [[got]] = remote.generate([prefixed], params)
        [[want]] = policy.generate([prefixed], params)
        assert got.text == want.text and got.completion_tokens == want.completion_tokens
        assert got.prompt_tokens == want.prompt_tokens
        assert len(got.logprobs) == got.completion_tokens
        assert list(got.logprobs) == pytest.approx(list(want.logprobs), abs=1e-4)
        # n samples with a seed, and stop strings
        rows = remote.generate(
            [Prompt.user("Tell me a story.")], SamplingParams(n=3, max_tokens=6, temperature=1, seed=3)
        )
        assert len(rows[0]) == 3 and len({c.text for c in rows[0]}) > 1
        full = remote.generate([Prompt.user(QUESTION)], SamplingParams(max_tokens=16))[0][0].text
        stop = " " + full.split(" ")[2]
        [[cut]] = remote.generate([Prompt.user(QUESTION)], SamplingParams(max_tokens=16, stop=(stop,)))
        assert (
            cut.text == full[: full.index(stop)] and cut.finish_reason == "stop" and cut.stop_reason == stop
        )
    finally:
        remote.close()
    plain = OpenAIPolicy(model=server.model_name, base_url=server.url, use_chat=False, max_retries=0)
    try:
        [[c]] = plain.generate([Prompt.user(QUESTION)], SamplingParams(max_tokens=4))
        assert c.completion_tokens == 4 and c.finish_reason == "length"
    finally:
        plain.close()


def test_langchain_chat_openai(server):
    langchain_openai = pytest.importorskip("langchain_openai")
    chat = langchain_openai.ChatOpenAI(
        base_url=server.url, api_key="x", model=server.model_name, max_tokens=6, temperature=0
    )
    assert isinstance(chat.invoke(QUESTION).content, str)
