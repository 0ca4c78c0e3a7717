"""The two programs of a HumanEval grading run; they run inside the sandbox, standard library only.

``humaneval`` builds each program from this file's text plus one call: ``serve(code,
entry)`` for the candidate process C, ``judge()`` for the tester T (see
``sandbox.run_judged``). Importing the module runs nothing.

Messages are JSON lines over two pipes (fd 3 in, fd 4 out in both processes)::

    T -> C  "go"                 T has read the tests and is non-dumpable; C now runs the code
    C -> T  {"ready": true} | {"error": traceback}
    T -> C  [args, kwargs]       one line per call of the candidate function by the tests
    C -> T  {"ok": value} | {"error": traceback}

Values are plain built-ins encoded by ``enc`` (a tag for containers, bytes, complex), so
T compares real ``int``/``str``/``list`` objects that C cannot subclass or fake. T gets
a token line and the task JSON (``prompt``, ``test``, ``entry``) on stdin, runs the
prompt (for its helpers) and the tests with every call of the function proxied to C, and
writes the token line and ``{"passed": ..., "feedback": ...}`` on fd 5. C never holds
the tests: it is a fresh interpreter given only its code; T keeps them in its own memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import linecache
import os
import sys
import traceback
from typing import Any

FROM_PEER, TO_PEER, VERDICT = 3, 4, 5
MAX_LINE = 16 << 20  # a reply larger than this is refused, not read: T must not run out of memory


class Stopped(Exception):
    """C ended, answered nonsense, or raised: the message is the feedback."""


def enc(x, depth: int = 0):
    t = type(x)  # the exact type: subclasses with a custom __eq__ are refused
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


def dec(x: Any) -> Any:
    if x is None or type(x) in (bool, int, float, str):
        return x
    if type(x) is not dict or len(x) != 1:
        raise Stopped("your code sent a malformed value")
    ((tag, v),) = x.items()
    if tag == "dict":
        return {dec(k): dec(w) for k, w in v}
    if tag == "bytes":
        return bytes.fromhex(v)
    if tag == "complex":
        return complex(*v)
    return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](dec(y) for y in v)


def flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):  # the candidate may have replaced or closed them
            stream.flush()


def tb_text(e: BaseException, filename: str) -> str:
    """The traceback lines of ``filename`` only (never the harness's) and the exception."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == filename]
    last = [str(e) + "\n"] if isinstance(e, Stopped) else traceback.format_exception_only(type(e), e)
    return "".join(traceback.format_list(frames) + last)


def serve(source: str, entry: str) -> None:
    """C: wait for T's go, run the candidate code, then answer T's calls of ``entry``."""
    rf, wf = os.fdopen(FROM_PEER, "rb"), os.fdopen(TO_PEER, "wb")
    if rf.readline() != b'"go"\n':  # under rlimits T and C share a uid: no candidate code before T is ready
        os._exit(1)
    linecache.cache["candidate.py"] = (len(source), None, source.splitlines(True), "candidate.py")

    def send(msg) -> None:
        flush()
        wf.write(json.dumps(msg).encode() + b"\n")
        wf.flush()

    g: dict[str, Any] = {"__name__": "__candidate__"}
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


def judge() -> None:
    """T: read the task, drive C through the tests, write the verdict on fd 5."""
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE=0 first: no ptrace, no /proc/<T>/mem or fd
    token, _, task = sys.stdin.buffer.read().partition(b"\n")
    task = json.loads(task)
    entry = task["entry"]

    def report(passed: bool, feedback: str) -> None:
        with os.fdopen(VERDICT, "wb") as f:
            f.write(token + b"\n" + json.dumps({"passed": passed, "feedback": feedback[-4000:]}).encode())
        os._exit(0)

    rf, wf = os.fdopen(FROM_PEER, "rb"), os.fdopen(TO_PEER, "wb")

    def receive() -> dict:
        line = rf.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise Stopped(f"your function returned a value over {MAX_LINE >> 20} MiB as JSON")
        if not line:
            raise Stopped("your code stopped the program; do not call exit()")
        try:
            msg = json.loads(line)
        except ValueError:
            raise Stopped("your code wrote to the grader's pipe; do not touch file descriptors") from None
        if type(msg) is not dict:
            raise Stopped("your code wrote to the grader's pipe; do not touch file descriptors")
        if "error" in msg:
            raise Stopped(str(msg["error"]))
        return msg

    def proxy(*args, **kwargs):
        wf.write(json.dumps(enc([list(args), kwargs])).encode() + b"\n")
        wf.flush()
        msg = receive()
        if "ok" not in msg:
            raise Stopped("your code sent a malformed reply")
        return dec(msg["ok"])

    linecache.cache["test.py"] = (len(task["test"]), None, task["test"].splitlines(True), "test.py")
    try:
        wf.write(b'"go"\n')
        wf.flush()
        receive()
    except Exception as e:
        report(False, "your code failed before the tests ran:\n" + tb_text(e, "test.py"))
    t: dict[str, Any] = {"__name__": "__test__"}
    try:
        exec(compile(task["prompt"], "prompt.py", "exec"), t)
        t[entry] = proxy
        exec(compile(task["test"], "test.py", "exec"), t)
        t["check"](proxy)
    except BaseException as e:
        report(False, "a test failed:\n" + tb_text(e, "test.py"))
    report(True, "passed all tests")
