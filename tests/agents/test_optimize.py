"""Agentic system search with scripted policies: the score improves when the design holds the key."""

from __future__ import annotations

import json

import pytest

from ponder.agents.optimize import (
    TokenBudget,
    evaluate_design,
    optimize_modules,
    optimize_prompt,
    optimize_team,
    parse_instruction,
    parse_topology,
)
from ponder.environments import make
from ponder.errors import BudgetExceeded, ConfigError
from ponder.models import ScriptedPolicy

KEY = "carry the tens"


def _env():
    return make("math", level=2, num_tasks=6, seed=0)


def _solver():
    """Right only when the instruction holds the key phrase: the optimiser has something to find."""
    env = _env()
    answers = {env.tasks[t].question: env.tasks[t].answer for t in env.task_ids()}

    def reply(prompt) -> str:
        q = next((q for q in answers if q in prompt.messages[-1].content), None)
        if q is not None and KEY in prompt.messages[0].content:
            return f"Answer: {answers[q]}"
        return "Answer: 0"

    return ScriptedPolicy(reply)


def _store(tmp_path):
    from ponder.memory import MemoryStore

    return MemoryStore.open(tmp_path / "mem", embedder="hashing")


def test_prompt_search_finds_the_key_and_keeps_the_history_in_memory(tmp_path):
    env = _env()
    optimizer = ScriptedPolicy(["<INS>Be brief.</INS>", f"<INS>Always {KEY} when adding.</INS>"], cycle=True)
    store = _store(tmp_path)
    try:
        result = optimize_prompt(
            _solver(),
            env,
            optimizer=optimizer,
            dev=env.task_ids()[:3],
            heldout=env.task_ids()[3:],
            iterations=3,
            memory=store,
        )
        assert [d.dev for d in result.history] == [0.0, 0.0, 1.0]  # start, "Be brief.", the key
        assert KEY in result.best.spec["instruction"] and result.best.scores["heldout"] == 1.0
        assert result.start.iteration == 0 and result.start.scores["heldout"] == 0.0  # before and after
        # the optimizer saw the failures (textual feedback) and the scored instructions
        meta = optimizer.prompts[1].messages[-1].content
        assert "Feedback:" in meta and "0%: > Be brief." in meta
        stored = store.list(kind="design", where={"level": "prompt"})
        assert len(stored) == 3 and {d.scores.get("heldout") for d in stored} == {0.0, 1.0, None}
        assert result.tokens > 0 and sum(d.tokens for d in result.history) <= result.tokens
    finally:
        store.close()


def test_budget_stops_the_search_with_the_best_so_far():
    env = _env()
    optimizer = ScriptedPolicy([f"<INS>{KEY}</INS>"], cycle=True)
    first = evaluate_design(
        __import__("ponder.agents", fromlist=["build_retry"]).build_retry(_solver(), max_trials=1),
        env,
        env.task_ids()[:2],
    )
    budget = TokenBudget(max_tokens=first.tokens)  # enough for the starting design only
    result = optimize_prompt(
        _solver(), env, optimizer=optimizer, dev=env.task_ids()[:2], iterations=5, budget=budget
    )
    assert result.stopped_by_budget and len(result.history) == 1 and result.best.iteration == 0
    with pytest.raises(BudgetExceeded, match="budget-tokens"):
        TokenBudget(1, spent=1).check()


def test_module_search_halves_and_picks_reflection():
    env = make("math", level=1, num_tasks=8, seed=0)

    def reply(prompt) -> str:  # wrong first; right once a reflection is in the prompt
        if "review a failed attempt" in prompt.messages[0].content:
            return "I added wrong."
        return "Answer: 13" if "earlier attempts" in prompt.messages[-1].content else "Answer: 1"

    result = optimize_modules(
        ScriptedPolicy(reply),
        env,
        dev=env.task_ids()[:1] * 4,
        space={"agent": ["retry", "reflexion"]},
        max_trials=2,
    )
    # rung 0: both on 2 tasks; rung 1: the better one on 4
    assert [(d.spec["agent"], d.iteration) for d in result.history] == [("retry", 0), ("reflexion", 1)]
    assert result.best.spec == {"agent": "reflexion"} and result.best.dev == 1.0
    with pytest.raises(ConfigError, match="module choice"):
        optimize_modules(ScriptedPolicy(["x"]), env, dev=["math/L1/0"], space={"colour": ["red"]})


def test_team_search_parses_validates_and_evaluates_proposals():
    env = _env()
    designs = iter(
        [
            "NODES: a:oracle\nEDGES:",  # unknown role: refused
            "NODES: a:solver, b:verifier\nEDGES: a->b",  # a chain: evaluated
        ]
    )
    designer = ScriptedPolicy(lambda p: next(designs))
    result = optimize_team(_solver(), env, designer=designer, dev=env.task_ids()[:2], iterations=2)
    assert [d.text.splitlines()[0] for d in result.history] == [
        "NODES: summarizer:summarizer, solver1:solver, solver2:solver",
        "NODES: a:solver, b:verifier",
    ]
    g = parse_topology("NODES: x:critic, y:solver\nEDGES: x->y, y->nowhere")
    assert list(g.edges) == [("x", "y")]
    with pytest.raises(ConfigError, match="NODES"):
        parse_topology("two solvers please")
    assert parse_instruction("no tags here") is None


def test_cli_optimize_writes_the_history(tmp_path, capsys):
    from ponder.cli import main

    argv = [
        "optimize",
        "--level",
        "module",
        "--env",
        "math",
        "--env-arg",
        "level=1",
        "--dev",
        "2",
        "--heldout",
        "1",
    ]
    argv += [
        "--policy",
        "scripted",
        "--script",
        "Answer: 13",
        "--embedder",
        "hashing",
        "--runs-dir",
        str(tmp_path),
    ]
    assert main([*argv, "--name", "o"]) == 0
    out = capsys.readouterr().out
    assert "best: dev" in out and "start: dev" in out and "held-out" in out
    data = json.loads((tmp_path / "o" / "optimize.json").read_text())
    assert len(data["history"]) == 6 and data["best"]["scores"]["heldout"] >= 0
    # a budget too small for anything but the starting design: it is scored, the search reports
    assert main([*argv, "--name", "small", "--budget-tokens", "10"]) == 0
    assert "budget exhausted" in capsys.readouterr().out
    small = json.loads((tmp_path / "small" / "optimize.json").read_text())
    assert small["stopped_by_budget"] and len(small["history"]) == 1
    assert main([*argv, "--name", "o"]) == 2  # nothing already written is overwritten
    assert "already holds" in capsys.readouterr().err


def test_designs_show_in_the_memory_cli_and_web_page(tmp_path, capsys):
    from ponder.cli import main
    from ponder.memory import Design, MemoryStore
    from ponder.memory.web import _summary

    d = Design(
        "Instruction: carry the tens.",
        level="prompt",
        spec={"instruction": "carry the tens"},
        scores={"dev": 0.5},
    )
    assert _summary(d) == ("Instruction: carry the tens.", "prompt, dev 50%")
    with MemoryStore.open(tmp_path / "mem", embedder="hashing") as store:
        store.add(d)
    assert main(["memory", "ls", "--memory", str(tmp_path / "mem"), "--kind", "design", "--json"]) == 0
    assert "carry the tens" in capsys.readouterr().out
