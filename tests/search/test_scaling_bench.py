"""bench/search_scaling.py at matched budgets, with a scripted policy (no model): the sampling
methods share one sample set, every method stays within its budget, greedy gets the searches'
step limit, the table shows 95 % intervals and marks oracle rows."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from ponder.models import ScriptedPolicy

BENCH = Path(__file__).resolve().parents[2] / "bench" / "search_scaling.py"


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("search_scaling_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls = []

    def reply(prompt):
        calls.append(prompt)
        done = prompt.assistant_prefix.count("\n\n")
        step = f"We work it out, step {done + 1} of the sum here."
        return f"{step}\n\nAnswer: {len(calls) % 3}" if done < 2 else f"Answer: {len(calls) % 3}"

    monkeypatch.setattr(module, "make_policy", lambda *a, **k: ScriptedPolicy(reply))
    return module


def run(bench, monkeypatch, tmp_path, *flags):
    monkeypatch.setattr(
        sys, "argv", ["search_scaling.py", "--tasks", "2", "--levels", "1", "--out", str(tmp_path), *flags]
    )
    bench.main()
    return json.loads((tmp_path / "results.json").read_text())


def test_matched_budgets(bench, monkeypatch, tmp_path):
    state = run(
        bench,
        monkeypatch,
        tmp_path,
        "--budgets",
        "40,80",
        "--ns",
        "4",
        "--max-samples",
        "16",
        "--max-steps",
        "3",
    )
    rows = state["rows"]
    assert state["mode"] == "budget"
    greedy = [r for r in rows if r["method"] == "greedy"]
    assert len(greedy) == 2 and all(r["budget"] is None for r in greedy)
    for r in rows:
        if r["budget"] is not None:
            # step of <= 48 tokens, solution of <= 3 steps: at most one sample past the budget
            one = 48 * 3 if r["method"] in ("majority", "best_of_n", "weighted_best_of_n") else 48
            assert r["generated_tokens"] < r["budget"] + one, r
            # --prm verifier (the default) reads the gold answer; majority does not use the PRM
            assert r["oracle"] == (r["method"] != "majority"), r
    # the three sampling methods used the same samples at exactly the same tokens
    for task in {r["task_id"] for r in rows}:
        for b in (40, 80):
            same = {
                (r["generated_tokens"], r["samples"])
                for r in rows
                if r["task_id"] == task and r["budget"] == b and r["n"] is None
            }
            assert len(same) == 1
    table = (tmp_path / "results.md").read_text()
    assert "B = 40 tokens" in table and "| beam (ORACLE) | 4 |" in table and "% [" in table
    assert "| majority | as B allows |" in table
    assert "<= 3 steps (greedy too)" in table
    assert (tmp_path / "accuracy_vs_tokens.png").stat().st_size > 1000


def test_n_mode_and_combine(bench, monkeypatch, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run(bench, monkeypatch, a, "--ns", "2", "--methods", "majority,best_of_n")
    run(bench, monkeypatch, b, "--ns", "2", "--methods", "beam")
    monkeypatch.setattr(sys, "argv", ["x", "--combine", str(a), str(b), "--out", str(tmp_path / "c")])
    bench.main()
    rows = json.loads((tmp_path / "c" / "results.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"greedy", "majority", "best_of_n", "beam"}
    assert sum(r["method"] == "greedy" for r in rows) == 2  # greedy once, not once per run
    assert "| beam (ORACLE) | 2 |" in (tmp_path / "c" / "results.md").read_text()
