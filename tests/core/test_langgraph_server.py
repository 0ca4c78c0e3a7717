"""Every agent served by LangGraph Server: ``langgraph.json``, the factories, and ``langgraph dev``
(in-memory) driven by the ``langgraph-sdk`` client, offline, with the scripted policy."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ponder.agents import AGENT_SPECS
from ponder.errors import ConfigError, UnknownName
from ponder.langgraph_app import (
    SETTINGS,
    ServeContext,
    build_served_graph,
    close_shared,
    graph_attr,
    langgraph_config,
    served_config,
)

ROOT = Path(__file__).resolve().parents[2]
TASK = "math/L1/0"  # What is 9 + 4?
#: act (wrong), reflect, act (right): reflexion succeeds on its second trial
SCRIPT = ["Answer: 12", "I added wrong: 9 + 4 is 13.", "Answer: 13"]
#: what keeps `langgraph dev` off the network: no CLI analytics, no PyPI version check, no LangSmith
OFFLINE = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGGRAPH_NO_VERSION_CHECK": "true",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
}


def test_langgraph_json_serves_every_agent():
    import ponder.langgraph_app as app

    on_disk = json.loads((ROOT / "langgraph.json").read_text())
    assert on_disk == langgraph_config(), "regenerate it: python -m ponder.langgraph_app > langgraph.json"
    assert set(on_disk["graphs"]) == set(AGENT_SPECS)
    for agent, path in on_disk["graphs"].items():
        module, attr = path.split(":")
        assert module == "ponder.langgraph_app" and attr == graph_attr(agent)
        assert callable(getattr(app, attr))


def test_settings_are_checked_in_one_line():
    with pytest.raises(ConfigError, match=r"^unknown setting 'polcy' for a served agent; valid settings: "):
        served_config("retry", {"polcy": "scripted"})
    with pytest.raises(ConfigError, match=r"^tasks must be an int, got 'five'$"):
        served_config("retry", {"tasks": "five"})
    with pytest.raises(UnknownName, match="unknown env 'maths'"):
        served_config("retry", {"env": "maths"})
    with pytest.raises(ConfigError, match="applies to search"):
        served_config("retry", {"algorithm": "majority"})
    with pytest.raises(ConfigError, match="memory_modes needs a memory"):
        served_config("reflexion", {"memory_modes": "reflective"})
    with pytest.raises(UnknownName, match="unknown agent 'nope'"):
        served_config("nope", {})
    assert set(SETTINGS) >= {"policy", "script", "env", "env_kwargs", "trials", "memory", "episode_id"}
    assert not set(SETTINGS) & {"agent", "runs_dir", "resume", "concurrency", "name"}


def test_every_agent_builds_for_a_read_without_loading_a_model():
    # the server draws graphs and reads threads with the assistant's config (often empty: the
    # default policy is the local model, which a read must not load)
    for agent in AGENT_SPECS:
        graph = build_served_graph(agent, {}, for_execution=False)
        assert graph.context_schema is ServeContext
        assert {"policy", "env", "episode_id"} <= set(graph.get_context_jsonschema()["properties"])


def test_served_graph_in_process_is_a_real_episode_with_memory(tmp_path):
    from ponder.memory import MemoryStore

    settings = {"policy": "scripted", "script": SCRIPT, "trials": 3, "memory": str(tmp_path / "mem")}
    settings |= {"embedder": "hashing", "episode_id": "ep-1", "run_id": "studio"}
    graph = build_served_graph("reflexion", settings)
    try:
        out = graph.invoke({"task_id": TASK}, context={"env": "math", "tasks": 1, **settings})
        assert out["success"] and [t["success"] for t in out["trials"]] == [False, True]
        assert out["reflections"] == [SCRIPT[1]]
    finally:
        close_shared()  # the shared store is closed, so the directory can be opened again
    store = MemoryStore.open(tmp_path / "mem", embedder="hashing")
    try:
        [rec] = store.list(kind="reflection")
        assert rec.text == SCRIPT[1] and rec.provenance.run_id == "studio"
        assert rec.provenance.episode_id == "ep-1"
    finally:
        store.close()


def test_context_makes_the_env_on_first_use_only():
    ctx = ServeContext(env="math", env_kwargs={"level": 2}, tasks=3, seed=5, policy="ignored here")
    assert ctx._env is None and ctx.seed == 5 and ctx.episode_id
    assert ctx.env.task_ids() == ["math/L2/0", "math/L2/1", "math/L2/2"]
    assert ctx.env is ctx.env
    with pytest.raises(ConfigError, match="feedback must be one of"):
        ServeContext(feedback="loud")


# -- langgraph dev, driven over HTTP --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``langgraph dev`` on ``langgraph.json`` (in-memory runtime, no reload, no browser, offline),
    run in a temp dir so its ``.langgraph_api`` state stays out of the repo; its URL."""
    pytest.importorskip("langgraph_api")
    pytest.importorskip("langgraph_sdk")
    cwd = tmp_path_factory.mktemp("langgraph-dev")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH_", "LANGCHAIN_"))}
    env |= OFFLINE | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("LANGGRAPH_CLOUD_LICENSE_KEY", None)
    log = (cwd / "server.log").open("w")
    cli = Path(sys.executable).with_name("langgraph")
    config = ("--config", str(ROOT / "langgraph.json"))
    proc = subprocess.Popen(
        [str(cli), "dev", "--no-browser", "--no-reload", "--port", str(_free_port()), *config],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = _wait_until_up(proc, cwd / "server.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_until_up(proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> str:
    """The server's URL (the port it reports: it moves to another when the asked one is taken),
    once ``/ok`` answers; a hang guard, not a timing check."""
    import urllib.request

    deadline = time.monotonic() + timeout
    url = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"langgraph dev exited: {log.read_text()[-3000:]}"
        if url is None:
            m = re.search(r"API: \S*?(http://127\.0\.0\.1:\d+)", log.read_text())
            url = m.group(1) if m else None
        if url is not None:
            try:
                with urllib.request.urlopen(f"{url}/ok", timeout=2) as r:
                    if r.status == 200:
                        return url
            except OSError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"langgraph dev did not come up: {log.read_text()[-3000:]}")


def test_dev_server_runs_reflexion_as_a_real_episode(server):
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=server)
    thread = client.threads.create()
    config = {
        "configurable": {"policy": "scripted", "script": SCRIPT, "env": "math", "tasks": 2, "trials": 3}
    }
    parts = list(
        client.runs.stream(
            thread["thread_id"], "reflexion", input={"task_id": TASK}, config=config, stream_mode="updates"
        )
    )
    assert not [p for p in parts if p.event == "error"], parts
    nodes = [node for p in parts if p.event == "updates" for node in p.data]
    assert nodes == ["observe", "act", "evaluate", "reflect", "act", "evaluate"]
    state = client.threads.get_state(thread["thread_id"])["values"]
    assert state["observation"].startswith("What is 9 + 4?")
    assert [t["action"] for t in state["trials"]] == ["Answer: 12", "Answer: 13"]
    assert state["success"] and state["reflections"] == [SCRIPT[1]]
    assert state["completion_tokens"] > 0


def test_dev_server_takes_settings_as_context_and_agent_options(server):
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=server)
    thread = client.threads.create()
    context = {"policy": "scripted", "script": ["9 + 4 = 13.\nAnswer: 13"], "algorithm": "majority", "n": 3}
    parts = list(client.runs.stream(thread["thread_id"], "search", input={"task_id": TASK}, context=context))
    assert not [p for p in parts if p.event == "error"], parts
    state = client.threads.get_state(thread["thread_id"])["values"]
    assert state["success"] and state["searches"][0]["algorithm"] == "majority"


def test_dev_server_reports_bad_settings_as_the_runs_one_line_error(server):
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=server)
    thread = client.threads.create()
    bad = {"configurable": {"policy": "scripted", "script": ["x"], "tasks": "five"}}
    errors = [
        p.data
        for p in client.runs.stream(thread["thread_id"], "retry", input={"task_id": TASK}, config=bad)
        if p.event == "error"
    ]
    assert errors == [{"error": "ConfigError", "message": "tasks must be an int, got 'five'"}]
    errors = [
        p.data
        for p in client.runs.stream(
            thread["thread_id"], "retry", input={"task_id": TASK}, context={"polcy": "scripted"}
        )
        if p.event == "error"
    ]
    assert errors and errors[0]["message"].startswith("unknown setting 'polcy' for a served agent")


def test_dev_server_draws_every_agent_and_offers_the_settings_form(server):
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=server)
    for agent in AGENT_SPECS:
        [assistant] = client.assistants.search(graph_id=agent)
        nodes = {n["id"] for n in client.assistants.get_graph(assistant["assistant_id"])["nodes"]}
        assert len(nodes - {"__start__", "__end__"}) >= 2, (agent, nodes)
    [assistant] = client.assistants.search(graph_id="reflexion")
    schema = client.assistants.get_schemas(assistant["assistant_id"])["context_schema"]
    assert {"policy", "script", "env", "env_kwargs", "trials", "memory"} <= set(schema["properties"])
