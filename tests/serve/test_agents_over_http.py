"""Every agent family, driven by ``OpenAIPolicy`` against ``ponder serve`` on the real SmolLM2.

The answers of a 135M model are mostly wrong; what is checked is that each graph runs to the end
over the HTTP API, with the requests it makes (n samples, stops, assistant prefixes) served.
"""

from __future__ import annotations

import pytest

from ponder.agents import AGENTS, AgentContext
from ponder.environments import make
from ponder.models.openai_policy import OpenAIPolicy
from ponder.models.prm_remote import RemotePRM
from ponder.serve import Server

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def served(policy):
    from ponder.models.prm_value import ValueHeadPRM

    with Server(policy, ValueHeadPRM(backbone=policy, layer=2)) as server:
        client = OpenAIPolicy(server.model_name, base_url=server.url, timeout=120, max_concurrency=8)
        yield server, client
        client.close()


def _math() -> AgentContext:
    return AgentContext(env=make("math", level=1, num_tasks=2, seed=0))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("retry", {"max_trials": 1}),
        ("reflexion", {"max_trials": 2}),
        ("debate", {"n_agents": 2, "rounds": 1}),
        ("team", {"topology": "chain", "n_agents": 2, "max_trials": 1}),
    ],
)
def test_math_agents_run_over_http(served, name, options):
    _, client = served
    before = client.requests
    out = AGENTS[name](client, **options).invoke({"task_id": "math/L1/0"}, context=_math())
    assert "success" in out and client.requests > before
    assert out["completion_tokens"] > 0


def test_search_agent_runs_over_http_with_the_served_prm(served):
    server, client = served
    env = make("math", level=1, num_tasks=2, seed=0)
    for prm in (RemotePRM(server.url), "verifier"):
        graph = AGENTS["search"](client, prm, algorithm="beam", n=2, options={"beam_width": 1}, max_steps=2)
        out = graph.invoke({"task_id": "math/L1/0"}, context=AgentContext(env=env))
        assert out["searches"] and "success" in out


def test_embodied_agent_runs_over_http(served):
    _, client = served
    graph = AGENTS["embodied"](client, max_steps=3, max_trials=1)
    out = graph.invoke({"task_id": "toy/chest"}, context=AgentContext(env=make("toy-rooms")))
    steps = out["trials"][0]["steps"]
    assert 1 <= len(steps) <= 3 and all(s["grounding"]["method"] for s in steps)
