"""ponder's agents through ``OpenAIPolicy`` against a vLLM look-alike: what ``docs/scale-out.md`` maps.

Every agent family (reflexion, PRM-guided search, debate, a team, the embodied agent) runs one
task through the same ``OpenAIPolicy`` on a local HTTP server that answers like vLLM's OpenAI
API, and the tests check what went over the wire: ``n`` samples as one request, ``stop``,
``logprobs``, ``continue_final_message`` for assistant prefixes; then vLLM's error replies,
and a ``ponder run --policy openai`` CLI run.
"""

from __future__ import annotations

import importlib.util
import json
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from ponder.agents import AGENTS, AgentContext
from ponder.environments import make
from ponder.errors import BackendError, ConfigError
from ponder.models import Prompt, SamplingParams
from ponder.models.openai_policy import OpenAIPolicy
from ponder.models.prm_oracle import LLMJudgePRM


def _load_fake_vllm() -> type:
    # the suite runs with --import-mode=importlib: tests are not a package, so load by path
    path = Path(__file__).with_name("test_openai_policy.py")
    spec = importlib.util.spec_from_file_location("_ponder_tests_fake_vllm", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FakeVLLM


FakeVLLM = _load_fake_vllm()

_QUESTION = re.compile(r"What is ([0-9+\-*/() ]+)\?")
_NUMBER = re.compile(r"-?\d+")
#: the toy-rooms actions, in the order that solves each task
_ACTION_ORDER = ("take key", "open chest", "open door", "go to kitchen", "eat apple", "take lamp")


def _value(expr: str) -> int:
    # digits, operators, parentheses and spaces only (the regex above): safe to evaluate
    return int(Fraction(eval(expr, {"__builtins__": {}}, {})))


def _tokens(text: str) -> list[str]:
    """Whitespace-led pieces that spell ``text`` exactly (so logprobs line up with the text)."""
    pieces = re.findall(r"\s*\S+", text)
    rest = text[len("".join(pieces)) :]
    if rest:
        pieces = [*pieces[:-1], pieces[-1] + rest] if pieces else [rest]
    return pieces


class AgentVLLM(FakeVLLM):
    """``FakeVLLM`` whose chat replies let ponder's agent graphs run, and that treats ``stop``
    as vLLM does: the text ends before the first stop string, which is not included, and the
    choice's ``stop_reason`` names it.

    Replies: math tasks get a worked solution ``"a + b = r.\\n\\nAnswer: r"``, wrong (``r - 1``)
    for odd choice indices, so ``n`` samples differ; with ``wrong_until_reflection`` the
    Reflexion actor is wrong until it sees a reflection. A chat that continues an assistant
    prefix gets the rest of its solution. Judges grade the last step by its last number;
    reflections, team advice and debate judges get fixed replies; toy-rooms turns get the next
    winning action after the ``Think:`` prefix.

    Extra actions: ``"503"`` (vLLM overloaded, retried by the client) and ``"400ctx"`` (vLLM's
    context-length 400, in its newer ``{"error": {...}}`` body).
    """

    def __init__(self) -> None:
        super().__init__()
        self.wrong_until_reflection = False

    def respond(self, path: str, body: dict[str, Any], headers: Any, action: str | None):
        if action == "503":
            return 503, self.error(503, "Service Unavailable", "ServiceUnavailableError"), {}
        if action == "400ctx":
            n_in, limit = 1900, body.get("max_tokens") or 0
            msg = (
                f"This model's maximum context length is 2048 tokens. However, you requested "
                f"{n_in + limit} tokens ({n_in} in the messages, {limit} in the completion). "
                "Please reduce the length of the messages or completion."
            )
            info = {k: v for k, v in self.error(400, msg, "BadRequestError").items() if k != "object"}
            return 400, {"error": info}, {}  # newer vLLM nests the error object
        if action or path != "/v1/chat/completions" or body.get("model") not in self.models:
            return super().respond(path, body, headers, action)
        msgs = body["messages"]
        continuing = bool(body.get("continue_final_message"))
        prefix = msgs[-1]["content"] if continuing else ""
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or 16
        choices, total = [], 0
        for i in range(body.get("n") or 1):
            text = self.reply(msgs, prefix, i)
            finish, stop_reason = "stop", None
            hits = [(text.index(s), s) for s in body.get("stop") or [] if s in text]
            if hits:
                at, stop_reason = min(hits)
                text = text[:at]
            tokens = _tokens(text)
            if len(tokens) > limit:
                tokens, finish, stop_reason = tokens[:limit], "length", None
            text = "".join(tokens)
            total += len(tokens)
            choice: dict[str, Any] = {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "stop_reason": stop_reason,
                "logprobs": None,
            }
            if body.get("logprobs"):
                content = [{"token": t, "logprob": -0.01, "bytes": None, "top_logprobs": []} for t in tokens]
                choice["logprobs"] = {"content": content}
            choices.append(choice)
        p_tok = sum(len(m["content"].split()) for m in msgs)
        usage = {"prompt_tokens": p_tok, "completion_tokens": total, "total_tokens": p_tok + total}
        reply = {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": 0}
        return 200, {**reply, "model": body["model"], "choices": choices, "usage": usage}, {}

    def reply(self, msgs: list[dict[str, str]], prefix: str, i: int) -> str:
        system = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
        users = [m["content"] for m in msgs if m["role"] == "user"]
        last = users[-1] if users else ""
        if "Verdict: correct" in last:  # LLMJudgePRM grading the last <step>
            question = _QUESTION.search(last)
            steps = re.findall(r"(?s)<step n=\"\d+\">\n(.*?)\n</step>", last)
            said = _NUMBER.findall(steps[-1]) if steps else []
            right = question is not None and said and int(said[-1]) == _value(question.group(1))
            return "Verdict: correct" if right else "Verdict: incorrect"
        if "Why did the attempt fail" in last:  # Reflexion's self-reflection
            return "Reflection: I added wrong. Next time I will count up from the larger number."
        if "Actions you can take" in last:  # embodied turn, continuing "Think:"
            offered = re.findall(r"(?m)^- (.+)$", last.split("Actions you can take", 1)[1])
            action = next((a for a in _ACTION_ORDER if a in offered), offered[-1] if offered else "look")
            return f" {action} moves me towards the goal.\nAction: {action}"
        if "Which agents went wrong" in last:  # team reflection
            return "solver1: recheck the sum.\nsummarizer: trust the majority."
        if "Reply: Best:" in last:  # debate judge
            return "Best: 1"
        question = next((q for q in map(_QUESTION.search, reversed(users)) if q), None)
        if question is None:
            return "I do not know.\nAnswer: 0"
        expr, value = question.group(1).strip(), _value(question.group(1))
        wrong = i % 2 == 1 or (
            self.wrong_until_reflection
            and system.startswith("You are a careful problem solver")
            and "earlier attempts" not in last
        )
        answer = value - 1 if wrong else value
        full = f"{expr} = {answer}.\n\nAnswer: {answer}"
        if prefix:
            return full[len(prefix) :] if full.startswith(prefix) else f"Answer: {answer}"
        return full


@pytest.fixture
def server():
    with AgentVLLM() as s:
        yield s


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("PONDER_OPENAI_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY", "PONDER_OPENAI_MODEL"):
        monkeypatch.delenv(var, raising=False)


def make_policy(server: AgentVLLM, **kw: Any) -> OpenAIPolicy:
    kw.setdefault("timeout", 10.0)
    return OpenAIPolicy("fake-model", base_url=server.url, **kw)


def bodies(server: AgentVLLM) -> list[dict[str, Any]]:
    return [r["body"] for r in server.requests if r["path"] == "/v1/chat/completions"]


def math_ctx(**kw: Any) -> AgentContext:
    return AgentContext(env=make("math", level=1, num_tasks=2, seed=0), **kw)  # math/L1/0: What is 9 + 4?


def test_fake_answers_like_vllm(server):
    policy = make_policy(server)
    params = SamplingParams(n=2, stop=("\n\n",), logprobs=True, seed=3)
    [row] = policy.generate([Prompt.user("What is 9 + 4?")], params)
    assert [c.text for c in row] == ["9 + 4 = 13.", "9 + 4 = 12."]
    assert [c.stop_reason for c in row] == ["\n\n", "\n\n"]  # vLLM says which stop string ended it
    assert all(c.logprobs == (-0.01,) * c.completion_tokens for c in row)
    [body] = bodies(server)
    assert (body["n"], body["stop"], body["logprobs"], body["seed"]) == (2, ["\n\n"], True, 3)
    [[c]] = policy.generate([Prompt.user("What is 9 + 4?", prefix="9 + 4 = 13.\n\n")], SamplingParams())
    assert c.text == "Answer: 13" and c.finish_reason == "stop"


def test_reflexion_reflects_over_the_api(server):
    server.wrong_until_reflection = True
    policy = make_policy(server)
    graph = AGENTS["reflexion"](policy, max_trials=3)
    out = graph.invoke({"task_id": "math/L1/0"}, context=math_ctx())
    assert [t["success"] for t in out["trials"]] == [False, True]
    assert out["reflections"] == ["I added wrong. Next time I will count up from the larger number."]
    sent = bodies(server)
    assert len(sent) == 3  # act, reflect, act
    assert all(b["n"] == 1 and b["model"] == "fake-model" and "seed" in b for b in sent)
    assert "earlier attempts" in sent[2]["messages"][-1]["content"]
    # the episode's token counts are what the server billed
    assert out["completion_tokens"] == policy.usage.completion_tokens
    assert policy.requests == 3 and policy.retries == 0


def test_search_beam_with_a_judge_prm_over_the_api(server):
    policy = make_policy(server)
    judge = LLMJudgePRM(policy, use_logprobs=True)  # the PRM is the same served model, grading in words
    graph = AGENTS["search"](policy, judge, algorithm="beam", n=4, options={"beam_width": 2}, max_steps=3)
    out = graph.invoke({"task_id": "math/L1/0"}, context=math_ctx())
    assert out["success"] and out["searches"][0]["answer"] == "13"
    sent = bodies(server)
    steps = [b for b in sent if b.get("stop") == ["\n\n"]]
    judged = [b for b in sent if b.get("logprobs")]
    assert steps and judged and len(steps) + len(judged) == len(sent)
    # depth 1: the 4 samples of the root are one request with n=4; depth 2: each kept beam
    # continues its own assistant prefix, n=2 per beam
    assert steps[0]["n"] == 4 and "continue_final_message" not in steps[0]
    deeper = steps[1:]
    assert deeper and all(b["n"] == 2 for b in deeper)
    for b in deeper:
        assert b["continue_final_message"] is True and b["add_generation_prompt"] is False
        assert b["messages"][-1] == {"role": "assistant", "content": "9 + 4 = 13.\n\n"}
    # the judge asks for one greedy verdict per step, with logprobs, and scores its probability
    assert all(b["n"] == 1 and b["temperature"] == 0.0 and b["logprobs"] is True for b in judged)
    assert 0.9 < out["searches"][0]["score"] < 1.0


def test_search_best_of_n_with_the_verifier_is_one_request(server):
    policy = make_policy(server)
    graph = AGENTS["search"](policy, "verifier", algorithm="best_of_n", n=4, max_steps=3)
    out = graph.invoke({"task_id": "math/L1/1"}, context=math_ctx())
    assert out["success"]
    [body] = bodies(server)  # 4 whole solutions: one request, sampled server-side
    assert body["n"] == 4 and "stop" not in body and body["max_tokens"] == 48 * 3
    assert out["searches"][0]["candidates"] == 4


def test_debate_round_zero_is_one_request_with_n(server):
    policy = make_policy(server)
    graph = AGENTS["debate"](policy, n_agents=3, rounds=2)
    out = graph.invoke({"task_id": "math/L1/0"}, context=math_ctx())
    assert out["success"] and out["answer"] == "13"
    assert [m["answer"] for m in out["messages"] if m["round"] == 0] == ["13", "12", "13"]
    sent = bodies(server)
    # round 0: three identical prompts -> one request with n=3 (one prefill on the server);
    # round 1: three different prompts -> three requests with n=1
    assert [b["n"] for b in sent] == [3, 1, 1, 1]
    assert all(b["messages"][-2]["role"] == "assistant" for b in sent[1:])


def test_team_runs_over_the_api(server):
    policy = make_policy(server)
    graph = AGENTS["team"](policy, topology="star", n_agents=2, max_trials=2)
    out = graph.invoke({"task_id": "math/L1/0"}, context=math_ctx())
    assert out["success"]
    by_agent = {m["agent"]: m["answer"] for m in out["messages"]}
    assert by_agent == {"solver1": "13", "solver2": "12", "summarizer": "13"}
    sent = bodies(server)
    assert [b["n"] for b in sent] == [2, 1]  # the two solvers' identical prompts, then the summarizer
    assert "Messages from your teammates" in sent[1]["messages"][-1]["content"]


def test_embodied_agent_on_toy_rooms_continues_the_think_prefix(server):
    policy = make_policy(server)
    graph = AGENTS["embodied"](policy, max_steps=5, max_trials=1)
    out = graph.invoke({"task_id": "toy/chest"}, context=AgentContext(env=make("toy-rooms")))
    assert out["success"]
    steps = out["trials"][0]["steps"]
    assert [(s["action"], s["grounding"]["method"]) for s in steps] == [
        ("take key", "exact"),
        ("open chest", "exact"),
    ]
    assert steps[0]["thought"] == "take key moves me towards the goal."
    sent = bodies(server)
    assert len(sent) == 2
    for b in sent:
        assert b["messages"][-1] == {"role": "assistant", "content": "Think:"}
        assert b["continue_final_message"] is True and b["add_generation_prompt"] is False


def test_agents_share_one_server_concurrently(server):
    from concurrent.futures import ThreadPoolExecutor

    policy = make_policy(server, max_concurrency=4)
    graph = AGENTS["retry"](policy, max_trials=1)
    env_ids = ["math/L1/0", "math/L1/1"]
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda t: graph.invoke({"task_id": t}, context=math_ctx()), env_ids))
    assert all(o["success"] for o in outs)
    assert policy.requests == 2 and policy.usage.calls == 2


# -- vLLM's error replies ---------------------------------------------------------------------


def test_context_length_400_is_one_line_and_not_retried(server):
    server.actions.append("400ctx")
    policy = make_policy(server, max_retries=2)
    with pytest.raises(BackendError) as e:
        policy.generate([Prompt.user("What is 9 + 4?")], SamplingParams(max_tokens=500))
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400
    assert "(HTTP 400): This model's maximum context length is 2048 tokens." in msg
    assert "check the sampling parameters and prompt length" in msg
    assert len(server.requests) == 1  # a 400 is not retried


def test_unknown_model_404_is_config_error(server):
    policy = OpenAIPolicy("Qwen/Qwen2.5-7B-Instruct", base_url=server.url, timeout=5)
    with pytest.raises(ConfigError) as e:
        policy.generate([Prompt.user("q")], SamplingParams())
    msg = str(e.value)
    assert "model 'Qwen/Qwen2.5-7B-Instruct' is not served at" in msg
    assert "The model `Qwen/Qwen2.5-7B-Instruct` does not exist." in msg and "\n" not in msg


@pytest.mark.parametrize("status", ["503", "429"])
def test_overload_is_retried_then_succeeds(server, status):
    server.actions.extend([status, status])
    policy = make_policy(server, max_retries=2)
    graph = AGENTS["retry"](policy, max_trials=1)
    out = graph.invoke({"task_id": "math/L1/0"}, context=math_ctx())
    assert out["success"]
    assert len(server.requests) == 3 and (policy.requests, policy.retries) == (1, 2)


def test_server_failure_500_is_backend_error_after_retries(server):
    server.actions.extend(["500", "500"])
    policy = make_policy(server, max_retries=1)
    graph = AGENTS["retry"](policy, max_trials=1)
    with pytest.raises(BackendError, match=r"failed \(HTTP 500\) after 1 retry: CUDA out of memory"):
        graph.invoke({"task_id": "math/L1/0"}, context=math_ctx())
    assert len(server.requests) == 2


# -- the CLI ----------------------------------------------------------------------------------


def test_cli_run_with_openai_policy(server, tmp_path, capsys):
    from ponder.cli import main

    server.wrong_until_reflection = True
    args = ["run", "--agent", "reflexion", "--env", "math", "--tasks", "2", "--trials", "2"]
    args += ["--concurrency", "2", "--policy", "openai", "--base-url", server.url, "--model", "fake-model"]
    args += ["--runs-dir", str(tmp_path), "--name", "vllm", "--embedder", "hashing", "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    episodes = [json.loads(x) for x in (tmp_path / "vllm" / "episodes.jsonl").read_text().splitlines()]
    assert sorted(e["task_id"] for e in episodes) == ["math/L1/0", "math/L1/1"]
    for e in episodes:
        assert e["model"] == "openai" and e["success"] and e["first_success_trial"] == 1
        assert e["trials"][0]["reflection"].startswith("I added wrong.")
        assert e["completion_tokens"] > 0
    assert {b["model"] for b in bodies(server)} == {"fake-model"}
    assert len(bodies(server)) == 2 * 3  # per task: act, reflect, act


def test_cli_unknown_model_exits_2_with_one_line(server, tmp_path, capsys):
    from ponder.cli import main

    args = ["run", "--agent", "retry", "--tasks", "1", "--trials", "1", "--policy", "openai"]
    args += ["--base-url", server.url, "--model", "nope", "--runs-dir", str(tmp_path), "--name", "bad"]
    assert main([*args, "--embedder", "hashing", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "model 'nope' is not served at" in err
