"""``ponder serve`` end to end on the real SmolLM2 ``LocalPolicy`` and its engine: the answers are
those of ``generate``, token for token, with the model's logprobs; disconnects and shutdown cancel
engine sequences; many clients share one batch."""

from __future__ import annotations

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
LONG = [{"role": "user", "content": "Write a very long story about a lighthouse keeper and the sea."}]
BIG = 400  # far more tokens than a cancelled request may generate


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


def _texts(chunks) -> dict[int, str]:
    out: dict[int, str] = {}
    for ch in chunks:
        for c in ch.choices:
            out[c.index] = out.get(c.index, "") + (c.delta.content or "")
    return out


def test_chat_equals_generate_streamed_or_not(server, client, policy):
    reply = _chat(client, server)
    prompt = Prompt.chat(MESSAGES)
    [[local]] = policy.generate([prompt], SamplingParams(max_tokens=12))
    assert reply.choices[0].message.content == local.text and local.text.strip()
    assert reply.choices[0].finish_reason == local.finish_reason
    assert reply.usage.prompt_tokens == len(policy.encode(prompt)) == local.prompt_tokens
    assert reply.usage.completion_tokens == local.completion_tokens
    chunks = list(_chat(client, server, stream=True, stream_options={"include_usage": True}))
    assert _texts(chunks) == {0: local.text} and chunks[-1].usage.model_dump() == reply.usage.model_dump()


def test_continue_final_message_and_add_generation_prompt(server, raw, policy):
    partial = [*MESSAGES, {"role": "assistant", "content": "The answer is"}]
    body = {"messages": partial, "max_tokens": 6, "temperature": 0}
    status, _, cont = raw(server.url, "POST", "/v1/chat/completions", {**body, "continue_final_message": True,
                                                                        "add_generation_prompt": False})  # fmt: skip
    prefixed = Prompt.user(QUESTION, prefix="The answer is")
    [[want]] = policy.generate([prefixed], SamplingParams(max_tokens=6))
    assert status == 200 and cont["choices"][0]["message"]["content"] == want.text
    assert cont["usage"]["prompt_tokens"] == len(policy.encode(prefixed))
    status, _, closed = raw(
        server.url, "POST", "/v1/chat/completions", {**body, "add_generation_prompt": False}
    )
    text = policy.tokenizer.apply_chat_template(partial, tokenize=False, add_generation_prompt=False)
    assert status == 200 and closed["usage"]["prompt_tokens"] == len(policy.encode(text))


def test_n_with_seed_reproduces_and_stop_cuts(server, client):
    kw = {"n": 3, "temperature": 1.0, "seed": 7, "max_tokens": 8}
    a, b = _chat(client, server, **kw), _chat(client, server, **kw)
    texts = [c.message.content for c in a.choices]
    assert texts == [c.message.content for c in b.choices] and len(set(texts)) > 1
    assert _texts(_chat(client, server, stream=True, **kw)) == dict(enumerate(texts))
    full = _chat(client, server, max_tokens=16).choices[0].message.content
    stop = " " + full.split(" ")[2]
    choice = _chat(client, server, max_tokens=16, stop=[stop]).choices[0]
    assert choice.message.content == full[: full.index(stop)] and choice.stop_reason == stop


def test_chat_logprobs_are_the_models(server, client, policy):
    reply = _chat(client, server, max_tokens=6, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 6
    [[local]] = policy.generate([Prompt.chat(MESSAGES)], SamplingParams(max_tokens=6, logprobs=True))
    assert [t.logprob for t in content] == pytest.approx(list(local.logprobs), abs=1e-4)
    for t in content:
        tops = [x.logprob for x in t.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and t.top_logprobs[0].token == t.token
        assert bytes(t.bytes).decode("utf-8", errors="replace") == t.token
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    streamed = [t.token for ch in _chat(client, server, max_tokens=6, logprobs=True, stream=True)
                for c in ch.choices if c.logprobs is not None for t in c.logprobs.content]  # fmt: skip
    assert streamed == [t.token for t in content]


def test_completions_token_ids_and_legacy_logprobs(server, client, policy):
    kw = {"model": server.model_name, "prompt": "Once upon a time", "max_tokens": 6, "temperature": 0}
    whole = client.completions.create(**kw, logprobs=2)
    choice, lp = whole.choices[0], whole.choices[0].logprobs
    assert (
        whole.usage.prompt_tokens == len(policy.encode("Once upon a time"))
        and choice.finish_reason == "length"
    )
    assert "".join(lp.tokens) == choice.text and len(lp.token_logprobs) == 6
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    assert all(len(top) == 2 and top[tok] == pytest.approx(v) for tok, v, top in
               zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True))  # fmt: skip
    ids = policy.encode("Once upon a time")
    assert client.completions.create(**{**kw, "prompt": ids}).choices[0].text == choice.text


def test_32_concurrent_requests_share_the_engine(server, client):
    results: dict[int, object] = {}

    def ask(i: int) -> None:
        try:
            results[i] = _chat(client, server, max_tokens=6,
                               messages=[{"role": "user", "content": f"Name a number above {i}."}])  # fmt: skip
        except Exception as e:  # collected and reported below
            results[i] = e

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not [r for r in results.values() if isinstance(r, Exception)] and len(results) == 32
    assert all(1 <= r.usage.completion_tokens <= 6 for r in results.values())


def test_disconnects_cancel_engine_sequences(policy, recording, wait):
    spy = recording(policy)
    with Server(spy) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        stream = client.chat.completions.create(
            model=server.model_name, messages=LONG, max_tokens=BIG, temperature=0, stream=True
        )
        [next(stream) for _ in range(3)]  # role, then two tokens
        stream.close()
        parts = urlsplit(server.url)
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:  # a waiting one
            data = (
                b'{"messages": [{"role": "user", "content": "Write a very long story."}], "max_tokens": 400}'
            )
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                         b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))  # fmt: skip
            wait(lambda: len(spy.streams) == 2, what="the waiting request to start")
        for seq in spy.streams:
            wait(lambda seq=seq: seq.done, what="the sequences to end after their clients left")
            assert seq.cancelled and seq.result().completion_tokens < BIG
        client.close()
    wait(lambda: policy.engine.info()["running"] == 0, what="the engine to be idle")


def test_shutdown_cancels_engine_sequences_past_the_grace(policy, recording, wait):
    spy = recording(policy)
    server = Server(spy).start()
    client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
    out: dict[str, BaseException] = {}

    def ask() -> None:
        try:
            list(
                client.chat.completions.create(
                    model=server.model_name, messages=LONG, max_tokens=BIG, stream=True
                )
            )
        except Exception as e:
            out["stream"] = e

    t = threading.Thread(target=ask)
    t.start()
    wait(lambda: spy.streams, what="the request to start")
    server.shutdown(grace=0.2)
    t.join(timeout=60)
    assert isinstance(out.get("stream"), openai.APIError) and "shutting down" in str(out["stream"])
    assert spy.streams[0].cancelled and spy.streams[0].result().completion_tokens < BIG
    client.close()
