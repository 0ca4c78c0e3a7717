"""Multi-agent debate with scripted policies: rounds, message routing, aggregators, per-agent policies."""

from __future__ import annotations

import json

import pytest

from ponder.agents import AgentContext, build_debate
from ponder.agents.debate import majority_answer, parse_choice
from ponder.environments import make
from ponder.errors import ConfigError
from ponder.models import ScriptedPolicy

TASK = "math/L1/0"  # What is 9 + 4?


def _env():
    return make("math", level=1, num_tasks=1, seed=0)


def _run(graph):
    return graph.invoke({"task_id": TASK}, context=AgentContext(env=_env()))


def test_agents_read_the_others_and_the_majority_decides():
    # round 0: 12, 13, 12 -> round 1 every agent switches to what it was shown most
    def reply(prompt):
        last = prompt.messages[-1].content
        if "other agents" not in last:
            return reply.first.pop(0)
        return "Answer: 13" if last.count("Answer: 13") >= 1 else "Answer: 12"

    reply.first = ["Answer: 12", "Answer: 13", "Answer: 12"]
    policy = ScriptedPolicy(reply)
    out = _run(build_debate(policy, n_agents=3, rounds=2))
    r0 = [m for m in out["messages"] if m["round"] == 0]
    r1 = [m for m in out["messages"] if m["round"] == 1]
    assert [m["answer"] for m in r0] == ["12", "13", "12"]
    assert [m["answer"] for m in r1] == ["13", "12", "13"]  # agent 1 saw only 12s
    assert out["answer"] == "13" and out["success"]
    # routing: in round 1 each agent sees its own answer as its turn and the two others quoted
    revise = [p for p in policy.prompts if "other agents" in p.messages[-1].content]
    assert len(revise) == 3
    assert revise[1].messages[-2].content == "Answer: 13"
    assert revise[1].messages[-1].content.count("> Answer: 12") == 2
    trial = out["trials"][0]
    assert trial["action"] == "Answer: 13" and len(trial["messages"]) == 6


def test_judge_picks_and_falls_back_to_the_vote():
    debaters = ScriptedPolicy(["Answer: 12", "Answer: 13", "Answer: 12"], cycle=True)
    judge = ScriptedPolicy(["Best: 2"])
    out = _run(build_debate(debaters, n_agents=3, rounds=1, aggregator="judge", judge=judge))
    assert out["answer"] == "13" and out["success"] and out["messages"][-1]["agent"] == "judge"
    assert "Answer 2:\n> Answer: 13" in judge.prompts[0].messages[-1].content
    muddled = ScriptedPolicy(["I cannot tell."])
    out = _run(build_debate(debaters, n_agents=3, rounds=1, aggregator="judge", judge=muddled))
    assert out["answer"] == "12"  # no number named: the majority decides


def test_each_agent_can_have_its_own_policy():
    a, b = ScriptedPolicy(["Answer: 13"], cycle=True), ScriptedPolicy(["Answer: 7"], cycle=True)
    out = _run(build_debate([a, b, a], n_agents=3, rounds=2))
    assert [m["answer"] for m in out["messages"]] == ["13", "7", "13"] * 2
    assert len(a.prompts) == 3 and len(b.prompts) == 2  # round 0: one request with n=2 for a's agents
    assert out["answer"] == "13"


def test_aggregation_helpers_and_bad_settings():
    assert majority_answer(["5", "6", "6", "5"]) == "5"  # tie: first seen
    assert majority_answer([None, None]) is None
    assert parse_choice("Answer 1 is right", 2) == 0 and parse_choice("Best: 9", 2) is None
    p = ScriptedPolicy(["x"])
    with pytest.raises(ConfigError, match="n_agents"):
        build_debate(p, n_agents=1)
    with pytest.raises(ConfigError, match="policies"):
        build_debate([p, p], n_agents=3)
    with pytest.raises(ConfigError, match="aggregator"):
        build_debate(p, aggregator="vote")
    graph = build_debate(p, n_agents=2)
    with pytest.raises(ConfigError, match="multi-step"):
        graph.invoke({"task_id": "toy/chest"}, context=AgentContext(env=make("toy-rooms")))


def test_runner_logs_every_message(tmp_path):
    from ponder.config import RunConfig
    from ponder.runner import run

    cfg = RunConfig(
        agent="debate",
        env="math",
        env_kwargs={"level": 1},
        tasks=2,
        trials=1,
        agents=2,
        rounds=3,
        policy="scripted",
        script=("Answer: 13",),
        embedder="hashing",
        runs_dir=str(tmp_path),
        name="d",
    )
    result = run(cfg, progress=False)
    eps = [json.loads(x) for x in (tmp_path / "d" / "episodes.jsonl").read_text().splitlines()]
    assert len(eps) == 2 and len(eps[0]["trials"][0]["messages"]) == 6
    assert {m["agent"] for m in eps[0]["trials"][0]["messages"]} == {0, 1}
    assert result.summary["episodes"] == 2
