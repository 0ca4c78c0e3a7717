"""Teams on networkx topologies: construction, validation, message routing, reflection, memory."""

from __future__ import annotations

import json
import re

import networkx as nx
import pytest

from ponder.agents import AgentContext, build_reflexion, build_team, make_topology
from ponder.agents.team import build_team_agent, parse_advice
from ponder.agents.topology import check_topology, schedule
from ponder.environments import make
from ponder.errors import ConfigError, UnknownName
from ponder.models import ScriptedPolicy

TASK = "math/L1/0"  # What is 9 + 4?


def _run(graph, **ctx):
    return graph.invoke(
        {"task_id": TASK}, context=AgentContext(env=make("math", level=1, num_tasks=1, seed=0), **ctx)
    )


def _user(prompt) -> str:
    return prompt.messages[-1].content


def test_builtin_topologies():
    sizes = {
        name: (make_topology(name, 3).number_of_nodes(), make_topology(name, 3).number_of_edges())
        for name in ("chain", "star", "mesh", "layered")
    }
    assert sizes == {"chain": (3, 2), "star": (4, 3), "mesh": (3, 6), "layered": (7, 12)}
    assert [make_topology("chain", 3).nodes[n]["role"] for n in ("agent1", "agent2", "agent3")] == [
        "planner",
        "solver",
        "verifier",
    ]
    r1, r2 = make_topology("random", 5, seed=3), make_topology("random", 5, seed=3)
    assert sorted(r1.edges) == sorted(r2.edges) and nx.is_directed_acyclic_graph(r1)
    assert all(r1.out_degree(n) > 0 for n in r1 if n != "summarizer")
    with pytest.raises(UnknownName, match="ring"):
        make_topology("ring", 3)
    assert schedule(make_topology("layered", 2)) == [
        ["solver1", "solver2"],
        ["critic1", "critic2"],
        ["summarizer"],
    ]


def test_bad_topologies_are_refused_in_one_line():
    def err(g, **kw):
        with pytest.raises(ConfigError) as e:
            check_topology(g, **{"max_rounds": None, **kw})
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "no agents" in err(nx.DiGraph())
    g = nx.DiGraph()
    g.add_node("a", role="oracle")
    assert "role 'oracle'" in err(g)
    g = nx.DiGraph([("a", "b"), ("b", "a")])
    nx.set_node_attributes(g, "solver", "role")
    assert re.search(r"cycle \((a -> b -> a|b -> a -> b)\)", err(g)) and "max_rounds" in err(g)
    check_topology(g, max_rounds=2)
    g.nodes["a"]["policy"] = 2
    assert "policy 2" in err(g, max_rounds=1)
    h = nx.DiGraph([("x", "sub")])
    h.nodes["x"]["role"] = "solver"
    h.nodes["sub"]["agent"] = object()
    assert "source node" in err(h)
    with pytest.raises(ConfigError, match="DiGraph"):
        check_topology(nx.Graph(), max_rounds=1)


def test_chain_routes_each_message_to_its_successor_only():
    said = {"plan for a team": "Plan: add them.", "problem solver": "Answer: 12", "verify": "Answer: 13"}
    policy = ScriptedPolicy(lambda p: next(v for k, v in said.items() if k in p.messages[0].content))
    out = _run(build_team(make_topology("chain", 3), policy))
    assert [(m["agent"], m["role"], m["to"]) for m in out["messages"]] == [
        ("agent1", "planner", ["agent2"]),
        ("agent2", "solver", ["agent3"]),
        ("agent3", "verifier", []),
    ]
    planner, solver, verifier = policy.prompts
    assert "teammates" not in _user(planner)
    assert "> Plan: add them." in _user(solver) and "Answer: 12" not in _user(solver)
    assert "> Answer: 12" in _user(verifier) and "Plan: add them." not in _user(verifier)
    assert out["answer"] == "13" and out["success"]  # the sink (verifier) decides


def test_cycles_run_max_rounds_and_read_the_previous_round():
    said = iter(["Answer: 12", "Answer: 13", "Answer: 13", "Answer: 13"])
    policy = ScriptedPolicy(lambda p: next(said))
    out = _run(build_team(make_topology("mesh", 2), policy, max_rounds=2))
    assert [(m["step"], m["agent"], m["answer"]) for m in out["messages"]] == [
        (0, "solver1", "12"),
        (0, "solver2", "13"),
        (1, "solver1", "13"),
        (1, "solver2", "13"),
    ]
    # step 0's two identical prompts went out as one request (n=2); then solver1, solver2
    assert "> Answer: 13" in _user(policy.prompts[1]) and "> Answer: 12" in _user(policy.prompts[2])
    assert out["answer"] == "13"  # no sinks in a mesh: every agent's last answer votes


def test_team_reflection_blames_agents_and_memory_scopes(tmp_path):
    from ponder.memory import MemoryStore

    def reply(p) -> str:
        if "assign each agent" in p.messages[0].content:
            return "solver1: recompute 9 + 4 digit by digit.\nsummarizer: do not copy a wrong answer."
        if "recompute 9 + 4" in _user(p) or "> Answer: 13" in _user(p):
            return "Answer: 13"
        return "Answer: 12"

    store = MemoryStore.open(tmp_path / "mem", embedder="hashing")
    try:
        policy = ScriptedPolicy(reply)
        team = build_team(make_topology("star", 1), policy, memory=store, max_trials=2)
        out = _run(team, run_id="r", episode_id="e1")
        assert [t["success"] for t in out["trials"]] == [False, True]
        assert out["advice"] == {
            "team/solver1": ["recompute 9 + 4 digit by digit."],
            "team/summarizer": ["do not copy a wrong answer."],
        }
        stored = {r.provenance.agent: r.text for r in store.list(kind="reflection")}
        assert stored == {
            "team/solver1": "recompute 9 + 4 digit by digit.",
            "team/summarizer": "do not copy a wrong answer.",
        }
        # a later episode: per-agent memory gives each agent its own advice; team memory shares it
        for scope, summarizer_sees in (("agent", False), ("team", True)):
            p2 = ScriptedPolicy(reply)
            _run(
                build_team(make_topology("star", 1), p2, memory=store, memory_scope=scope),
                run_id="r2",
                episode_id=scope,
            )
            solver_prompt, summarizer_prompt = p2.prompts[0], p2.prompts[1]
            assert "recompute 9 + 4" in _user(solver_prompt)
            assert ("recompute 9 + 4" in _user(summarizer_prompt)) is summarizer_sees
    finally:
        store.close()
    assert parse_advice("**solver1** - check", ["solver1"]) == {"solver1": "check"}


def test_a_whole_agent_graph_can_be_a_node_and_policies_differ_per_node():
    g = nx.DiGraph()
    g.add_node("reflexion", agent=build_reflexion(ScriptedPolicy(["Answer: 13"], cycle=True), max_trials=1))
    g.add_node("judge", prompt="You pick the best answer.", policy=1)
    g.add_edge("reflexion", "judge")
    judge = ScriptedPolicy(["Answer: 13"])
    out = _run(build_team(g, [ScriptedPolicy(["unused"]), judge]))
    assert [(m["agent"], m["answer"]) for m in out["messages"]] == [("reflexion", "13"), ("judge", "13")]
    assert "> Answer: 13" in _user(judge.prompts[0]) and out["success"]


def test_runner_draws_the_topology_and_logs_messages(tmp_path):
    from ponder.config import RunConfig
    from ponder.runner import run

    cfg = RunConfig(
        agent="team",
        env="math",
        env_kwargs={"level": 1},
        tasks=2,
        trials=1,
        agents=2,
        topology="layered",
        policy="scripted",
        script=("Answer: 13",),
        embedder="hashing",
        runs_dir=str(tmp_path),
        name="t",
    )
    run(cfg, progress=False)
    assert (tmp_path / "t" / "topology.png").stat().st_size > 2000
    ep = json.loads((tmp_path / "t" / "episodes.jsonl").read_text().splitlines()[0])
    assert [m["agent"] for m in ep["trials"][0]["messages"]] == [
        "solver1",
        "solver2",
        "critic1",
        "critic2",
        "summarizer",
    ]
    graph = build_team_agent(ScriptedPolicy(["x"]), topology="mesh", n_agents=2, rounds=3)
    assert graph.topology.number_of_edges() == 2
