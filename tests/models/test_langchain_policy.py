"""LangChain chat models as ponder policies (``LangChainPolicy``), and the one-line error for a
chat model (or anything else) passed where a policy goes.

Fakes from ``langchain_core`` (and two small ``BaseChatModel`` s written here) for n, stop,
usage, prefixes and async; ``ChatOpenAI`` against a real ``ponder serve`` for the rest."""

from __future__ import annotations

import asyncio
import json
import re
import select
import subprocess
import sys
import threading
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.language_models import BaseChatModel, FakeListChatModel, GenericFakeChatModel
from langchain_core.language_models.fake_chat_models import ParrotFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from ponder.agents import AGENT_SPECS, AgentContext, build_debate, build_retry
from ponder.config import RunConfig
from ponder.environments import make
from ponder.errors import BackendError, ConfigError
from ponder.models import OpenAIPolicy, Prompt, SamplingParams, ScriptedPolicy
from ponder.models.check import ensure_policy
from ponder.models.fake import count_tokens
from ponder.models.langchain_policy import LangChainPolicy
from ponder.runner import run

Q = Prompt.user("What is 9 + 4?")


def _reply(text: str, *, out: int = 3, finish: str = "stop", **meta: Any) -> AIMessage:
    return AIMessage(
        content=text,
        usage_metadata={"input_tokens": 11, "output_tokens": out, "total_tokens": 11 + out},
        response_metadata={"finish_reason": finish, **meta},
    )


class Settings(BaseChatModel):
    """Answers with the sampling settings it was called with (JSON), and counts calls in flight."""

    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    top_p: float | None = None
    delay: float = 0.0
    calls: list[dict[str, Any]] = Field(default_factory=list)
    in_flight: list[int] = Field(default_factory=lambda: [0, 0])  # now, most

    @property
    def _llm_type(self) -> str:
        return "settings"

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kw: Any) -> ChatResult:
        seen = {"temperature": self.temperature, "max_tokens": self.max_tokens, "seed": self.seed}
        seen |= {"top_p": self.top_p, "stop": stop, "roles": [m.type for m in messages]}
        self.calls.append(seen)
        return ChatResult(generations=[ChatGeneration(message=_reply(json.dumps(seen)))])

    async def _agenerate(self, messages, stop=None, run_manager=None, **kw: Any) -> ChatResult:
        self.in_flight[0] += 1
        self.in_flight[1] = max(self.in_flight)
        await asyncio.sleep(self.delay)
        self.in_flight[0] -= 1
        return self._generate(messages, stop)


class NativeN(BaseChatModel):
    """Samples ``n`` at once the way langchain-openai reports it: every choice carries the whole
    response's usage; ``short`` returns one choice fewer than asked."""

    n: int = 1
    short: bool = False

    @property
    def _llm_type(self) -> str:
        return "native-n"

    def _generate(self, messages, stop=None, run_manager=None, **kw: Any) -> ChatResult:
        k = self.n - 1 if self.short else self.n
        usage = {"input_tokens": 20, "output_tokens": 10, "total_tokens": 30}
        gens = [ChatGeneration(message=AIMessage(f"Answer: {i}", usage_metadata=usage)) for i in range(k)]
        return ChatResult(generations=gens)


# -- sampling ---------------------------------------------------------------------------------


def test_n_samples_are_separate_calls_seeded_apart_with_the_settings_the_model_declares():
    model = Settings(calls=[])
    policy = LangChainPolicy(model, max_concurrency=1)
    params = SamplingParams(n=3, max_tokens=7, temperature=0.5, top_p=0.9, seed=40, stop=("\n\n",))
    rows = policy.generate([Q, Prompt.user("2+2?", system="Be brief.")], params)
    assert [len(r) for r in rows] == [3, 3]
    seen = [json.loads(c.text) for row in rows for c in row]
    assert [s["seed"] for s in seen] == [40, 41, 42, 40, 41, 42]
    assert {(s["temperature"], s["max_tokens"], s["top_p"]) for s in seen} == {(0.5, 7, 0.9)}
    assert [s["roles"] for s in seen][::3] == [["human"], ["system", "human"]]
    assert {tuple(s["stop"]) for s in seen} == {("\n\n",)}  # stops="model": sent, and cut again here
    assert model.temperature is None  # each call set a copy
    c = rows[0][0]
    assert (c.prompt_tokens, c.completion_tokens, c.finish_reason) == (11, 3, "stop")
    assert policy.usage.as_dict() == {"prompt_tokens": 22, "completion_tokens": 18, "calls": 1}
    assert policy.estimated_usage == 0 and policy.unapplied == set()


def test_client_stops_are_not_sent_and_always_name_the_stop_string():
    model = Settings(calls=[])
    policy = LangChainPolicy(model, stops="client")
    [[c]] = policy.generate([Q], SamplingParams(stop=("roles",)))
    assert model.calls[0]["stop"] is None
    assert c.stop_reason == "roles" and c.finish_reason == "stop" and "roles" not in c.text


def test_a_model_without_usage_or_settings_is_estimated_and_says_what_it_could_not_apply(caplog):
    text = "Step 1: 9 + 4 = 13.\n\nAnswer: 13"
    policy = LangChainPolicy(FakeListChatModel(responses=[text]))
    [[c, d]] = policy.generate([Q], SamplingParams(n=2, temperature=0.7, stop=("\n\n",)))
    assert c.text == d.text == "Step 1: 9 + 4 = 13." and c.stop_reason == "\n\n"
    assert c.completion_tokens == count_tokens(text)  # what was generated, past the stop too
    assert c.prompt_tokens == count_tokens(Q.messages[0].content)
    assert policy.estimated_usage == 2
    assert policy.unapplied == {"temperature", "max_tokens"}  # top_p 1 changes nothing, no seed
    assert sum("has no temperature setting" in r.message for r in caplog.records) == 1


def test_finish_reasons_and_reported_stop_strings():
    replies = iter(
        [
            _reply("cut off", finish="length"),
            AIMessage("cut off", response_metadata={"stop_reason": "max_tokens"}),
            AIMessage("Step 1", response_metadata={"stop_reason": "stop_sequence", "stop_sequence": "\n\n"}),
            _reply("done"),
        ]
    )
    policy = LangChainPolicy(GenericFakeChatModel(messages=replies), max_concurrency=1)
    rows = policy.generate([Q] * 4, SamplingParams(stop=("\n\n",)))
    assert [(r[0].finish_reason, r[0].stop_reason) for r in rows] == [
        ("length", None),
        ("length", None),
        ("stop", "\n\n"),  # Anthropic's way of saying which stop string ended it
        ("stop", None),  # end of sequence
    ]


def test_native_n_splits_the_shared_usage_and_refuses_a_short_answer():
    policy = LangChainPolicy(NativeN(), n="native")
    [row] = policy.generate([Q], SamplingParams(n=3))
    assert [c.text for c in row] == ["Answer: 0", "Answer: 1", "Answer: 2"]
    assert [c.completion_tokens for c in row] == [4, 3, 3] and row[0].prompt_tokens == 20
    with pytest.raises(BackendError, match=r"returned 2 of 3 samples.*n='calls'"):
        LangChainPolicy(NativeN(short=True), n="native").generate([Q], SamplingParams(n=3))
    with pytest.raises(ConfigError, match="has no n setting"):
        LangChainPolicy(FakeListChatModel(responses=["x"]), n="native")


def test_logprobs_are_refused():
    with pytest.raises(ConfigError, match="no logprobs"):
        LangChainPolicy(FakeListChatModel(responses=["x"])).generate([Q], SamplingParams(logprobs=True))


# -- assistant prefix ---------------------------------------------------------------------------


def test_a_prefix_needs_a_way_to_continue_it():
    prompt = Prompt.user("What is 9 + 4?", prefix="Step 1:")
    with pytest.raises(ConfigError, match=r"^ParrotFakeChatModel cannot continue an assistant prefix"):
        LangChainPolicy(ParrotFakeChatModel()).generate([prompt])
    # "trailing": the prefix is the final assistant message (the parrot returns the last message)
    [[c]] = LangChainPolicy(ParrotFakeChatModel(), prefix_mode="trailing").generate([prompt])
    assert c.text == "Step 1:"
    with pytest.raises(ConfigError, match="sends extra_body"):
        LangChainPolicy(ParrotFakeChatModel(), prefix_mode="continue")


def test_chat_openai_continues_a_prefix_with_vllm_s_fields():
    openai = pytest.importorskip("langchain_openai")
    chat = openai.ChatOpenAI(
        model="m", base_url="http://127.0.0.1:9/v1", api_key="x", extra_body={"top_k": 5}
    )
    policy = LangChainPolicy(chat)
    assert (policy.prefix_mode, policy.stops, policy.name) == ("continue", "client", "ChatOpenAI:m")
    params = SamplingParams(max_tokens=9, seed=3)
    copy = policy._model_for(Prompt.user("q", prefix="Step 1:"), params, 0)
    payload = copy._get_request_payload(policy._messages(Prompt.user("q", prefix="Step 1:")))
    assert payload["extra_body"] == {
        "top_k": 5,
        "continue_final_message": True,
        "add_generation_prompt": False,
    }
    assert payload["messages"][-1] == {"role": "assistant", "content": "Step 1:"}
    assert (payload["max_completion_tokens"], payload["seed"], payload["n"]) == (9, 3, 1)
    plain = policy._model_for(Prompt.user("q"), params, 0)._get_request_payload(
        policy._messages(Prompt.user("q"))
    )
    assert plain["extra_body"] == {"top_k": 5}


# -- async ------------------------------------------------------------------------------------------


def test_agenerate_runs_calls_concurrently_within_max_concurrency():
    model = Settings(calls=[], in_flight=[0, 0], delay=0.05)
    policy = LangChainPolicy(model, max_concurrency=2)
    rows = asyncio.run(policy.agenerate([Q, Q, Q], SamplingParams(n=2, seed=1)))
    assert [len(r) for r in rows] == [2, 2, 2] and model.in_flight[1] == 2
    assert sorted(json.loads(c.text)["seed"] for r in rows for c in r) == [1, 1, 1, 2, 2, 2]
    assert policy.usage.calls == 1 and policy.usage.completion_tokens == 18


def test_model_errors_are_one_line_backend_errors():
    class Down(FakeListChatModel):
        def _call(self, *a: Any, **k: Any) -> str:
            raise ConnectionError("connection refused\n  at port 9")

    policy = LangChainPolicy(Down(responses=["x"]), name="down")
    with pytest.raises(BackendError, match=r"^down failed: ConnectionError: connection refused at port 9$"):
        policy.generate([Q])
    with pytest.raises(BackendError):
        asyncio.run(policy.agenerate([Q]))


# -- a chat model where a policy goes ------------------------------------------------------------


@pytest.mark.parametrize("agent", list(AGENT_SPECS))
def test_every_agent_refuses_a_chat_model_in_one_line(agent):
    chat = FakeListChatModel(responses=["Answer: 13"])
    with pytest.raises(ConfigError) as err:
        AGENT_SPECS[agent].factory(chat, max_trials=1)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("policy FakeListChatModel is a LangChain chat model, not a ponder Policy; wrap it:")
    assert "LangChainPolicy(model)" in msg


def test_other_non_policies_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^policy \(object\) is not a ponder Policy: it lacks name, usage"):
        build_retry(object())
    with pytest.raises(ConfigError, match=r"^policy 'local' is a name, not a ponder Policy; build it with"):
        build_retry("local")
    chat = FakeListChatModel(responses=["x"])
    with pytest.raises(ConfigError, match=r"^policy 2 of 2 FakeListChatModel is a LangChain chat model"):
        build_debate([ScriptedPolicy(["x"]), chat], n_agents=2)
    with pytest.raises(ConfigError, match=r"LangChain runnable.*chat model itself"):
        ensure_policy(chat.bind(stop=["x"]))
    with pytest.raises(ConfigError, match="is a ponder Policy already"):
        LangChainPolicy(ScriptedPolicy(["x"]))


def test_run_refuses_a_chat_model_before_writing_anything(tmp_path):
    cfg = RunConfig(agent="retry", env="math", tasks=1, trials=1, runs_dir=str(tmp_path), memory="none")
    with pytest.raises(ConfigError, match=r"^policy FakeListChatModel is a LangChain chat model"):
        run(cfg, policy=FakeListChatModel(responses=["Answer: 13"]), progress=False)
    assert not any(tmp_path.iterdir())


def test_a_wrapped_chat_model_runs_agents_and_runs(tmp_path):
    policy = LangChainPolicy(FakeListChatModel(responses=["9 + 4 = 13.\nAnswer: 13"]))
    out = build_retry(policy, max_trials=2).invoke(
        {"task_id": "math/L1/0"}, context=AgentContext(env=make("math", num_tasks=1))
    )
    assert out["success"] and out["completion_tokens"] == count_tokens("9 + 4 = 13.\nAnswer: 13")
    cfg = RunConfig(agent="reflexion", env="math", tasks=2, trials=2, runs_dir=str(tmp_path), memory="none")
    result = run(cfg, policy=policy, progress=False)
    assert [e["model"] for e in result.episodes] == ["FakeListChatModel", "FakeListChatModel"]


# -- ChatOpenAI against ponder serve (the real SmolLM2) ------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``ponder serve`` (SmolLM2 on the CPU) in a subprocess: its ``/v1`` URL."""
    log = (tmp_path_factory.mktemp("serve") / "stderr.txt").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ponder.cli", "serve", "--port", "0", "--device", "cpu", "--name", "smol"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        # the first line comes once the model is loaded and the port bound (a hang guard, not a timing check)
        ready, _, _ = select.select([proc.stdout], [], [], 300)
        line = proc.stdout.readline() if ready else ""
        match = re.search(r"serving smol at (http://127\.0\.0\.1:\d+/v1)", line)
        if not match:
            log.seek(0)
            pytest.fail(f"ponder serve did not start: {line!r} {log.read()[-2000:]}")
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe drained
        yield match.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _chat(url: str) -> Any:
    openai = pytest.importorskip("langchain_openai")
    return openai.ChatOpenAI(base_url=url, api_key="x", model="smol", max_retries=0, timeout=120)


@pytest.mark.real_model
def test_chat_openai_talks_to_ponder_serve(served):
    reply = _chat(served).invoke("What is 2+2?", max_tokens=6, temperature=0)
    assert isinstance(reply.content, str) and reply.content
    assert reply.usage_metadata["output_tokens"] <= 6


@pytest.mark.real_model
def test_wrapped_chat_openai_samples_exactly_as_openai_policy_does(served):
    """Same server, same settings: the same texts and counts (greedy, seeded n=2, a prefix, a stop)."""
    lc = LangChainPolicy(_chat(served))
    oa = OpenAIPolicy("smol", base_url=served, max_retries=0)
    prompts = [Q, Prompt.user("Solve 3 + 4.", prefix="Step 1:")]
    try:
        for params in (
            SamplingParams(max_tokens=12),
            SamplingParams(n=2, max_tokens=12, temperature=1.0, seed=7),
            SamplingParams(max_tokens=24, stop=("\n",)),
        ):
            ours, theirs = lc.generate(prompts, params), oa.generate(prompts, params)
            for a, b in zip([c for r in ours for c in r], [c for r in theirs for c in r], strict=True):
                assert (a.text, a.prompt_tokens, a.finish_reason, a.stop_reason) == (
                    b.text,
                    b.prompt_tokens,
                    b.finish_reason,
                    b.stop_reason,
                )
                # stops are cut here (client), so the model may have generated past them
                assert (
                    a.completion_tokens >= b.completion_tokens
                    if params.stop
                    else a.completion_tokens == b.completion_tokens
                )
        assert lc.estimated_usage == 0 and lc.unapplied == set()
    finally:
        oa.close()


@pytest.mark.real_model
def test_reflexion_and_a_prefixed_search_through_chat_openai(served, tmp_path):
    class Recording(LangChainPolicy):
        def __init__(self, chat: Any):
            super().__init__(chat)
            self.prefixes: list[str] = []

        def _messages(self, prompt: Prompt) -> list[BaseMessage]:
            self.prefixes.append(prompt.assistant_prefix)
            return super()._messages(prompt)

    policy = Recording(_chat(served))
    common = {"env": "math", "tasks": 1, "runs_dir": str(tmp_path), "memory": "none", "max_tokens": 48}
    cfg = RunConfig(agent="reflexion", trials=2, name="reflexion", **common)
    [episode] = run(cfg, policy=policy, progress=False).episodes
    assert episode["model"] == "ChatOpenAI:smol" and episode["trials"]
    assert episode["completion_tokens"] > 0
    if not episode["success"]:  # a failed first trial was reflected on, by the served model
        assert episode["trials"][0]["reflection"]

    # beam search: every step after the first continues the steps so far (an assistant prefix)
    policy.prefixes.clear()
    search = RunConfig(
        agent="search",
        algorithm="beam",
        prm="verifier",
        n=2,
        step_tokens=16,
        max_steps=2,
        name="search",
        **common,
    )
    [episode] = run(search, policy=policy, progress=False).episodes
    assert episode["searches"] and episode["completion_tokens"] > 0
    assert any(policy.prefixes) and not all(policy.prefixes)
