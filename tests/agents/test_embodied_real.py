"""The embodied agent in the real worlds: TextWorld games and the ScienceWorld JVM; SmolLM2 on one game."""

from __future__ import annotations

import json
import shutil

import pytest

from ponder.agents import AgentContext
from ponder.agents.embodied import build_embodied_agent
from ponder.models import ScriptedPolicy

pytest.importorskip("textworld")
pytest.importorskip("scienceworld")


def follow(actions: list[str]) -> ScriptedPolicy:
    """A policy that answers every act prompt with the next action of ``actions``, ReAct style."""
    it = iter(actions)
    return ScriptedPolicy(lambda prompt: f"Think: the next step of the plan.\nAction: {next(it)}")


def _play(env, task_id, actions, **kw):
    graph = build_embodied_agent(follow(actions), max_steps=len(actions) + 2, max_trials=1, **kw)
    return graph.invoke({"task_id": task_id}, context=AgentContext(env=env))


@pytest.fixture(scope="module")
def tw_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tw")


@pytest.mark.parametrize("level", [1, 3])
def test_textworld_walkthrough_through_the_graph_wins(tw_cache, level):
    from ponder.environments.textworld import TextWorldEnv

    env = TextWorldEnv(level=level, num_games=1, cache_dir=tw_cache)
    try:
        tid = env.task_ids()[0]
        walk = env.walkthrough(tid)
        out = _play(env, tid, walk)
        steps = out["trials"][0]["steps"]
        assert out["success"] and [s["action"] for s in steps] == walk
        assert {s["grounding"]["method"] for s in steps} <= {"exact", "normalised"}
        assert steps[-1]["score"] == 100.0
    finally:
        env.close()


@pytest.mark.skipif(shutil.which("java") is None, reason="ScienceWorld needs java on PATH")
def test_scienceworld_gold_path_through_the_graph_wins_and_leaves_no_jvm():
    from ponder.environments.scienceworld import ScienceWorldEnv, java_children

    before = java_children()
    env = ScienceWorldEnv(tasks="find-plant", variations=1)
    try:
        tid = env.task_ids()[0]
        gold = env.walkthrough(tid)
        out = _play(env, tid, gold)
        steps = out["trials"][0]["steps"]
        assert out["success"] and steps[-1]["score"] == 100.0
        # the gold actions are admissible as written: grounding keeps them
        assert [s["action"] for s in steps] == gold
    finally:
        env.close()
    assert java_children() <= before


@pytest.mark.real_model
def test_smollm2_plays_a_textworld_game_from_the_cli(tmp_path, capsys):
    """SmolLM2 acts, MiniLM grounds, Chroma keeps the trajectory: a short real episode."""
    from ponder.cli import main

    # games go to a fresh folder; PONDER_CACHE stays, so the converted model is reused
    argv = ["run", "--agent", "embodied", "--env", "textworld", "--env-arg", "level=1", "--tasks", "1"]
    argv += ["--env-arg", f"cache_dir={tmp_path / 'games'}"]
    argv += [
        "--trials",
        "2",
        "--env-steps",
        "4",
        "--max-tokens",
        "48",
        "--memory-modes",
        "reflective,concept",
    ]
    assert main([*argv, "--runs-dir", str(tmp_path), "--name", "tw", "--no-progress"]) == 0
    [ep] = [json.loads(x) for x in (tmp_path / "tw" / "episodes.jsonl").read_text().splitlines()]
    steps = [s for t in ep["trials"] for s in t["steps"]]
    assert steps and all(s["action"] for s in steps) and ep["completion_tokens"] > 0
    assert {s["grounding"]["method"] for s in steps} <= {
        "exact",
        "normalised",
        "similar",
        "unmatched",
        "empty",
    }
    assert (tmp_path / "tw" / "score_by_trial.png").exists()
    assert "Score by trial" in (tmp_path / "tw" / "report.md").read_text()
