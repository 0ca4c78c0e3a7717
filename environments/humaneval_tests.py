"""HumanEval's visible tests: the examples in each prompt's docstring, and tests the model writes.

An agent may only learn from tests it can see. Reflexion gets its feedback (and its signal to
stop) from the examples given with the task and from unit tests the model writes itself, and
runs the benchmark's hidden tests once, on the final program. This module turns docstring
examples (``>>> f(1)`` / ``2``, ``f(1) == 2``, ``f(1) ➞ 2``, ``f(1) => 2``, ``f(1) -> 2``) and
model-written ``assert f(...) == ...`` lines into ``VisibleTest`` s, writes the ``check``
function the sandbox's tester runs over them (every test, each failure recorded), and words its
result at a feedback level.

Example:
    >>> tests = docstring_tests("def add(x, y):\\n    >>> add(2, 3)\\n    5\\n", "add")
    >>> tests
    [VisibleTest(call='add(2, 3)', expected='5')]
    >>> print(feedback_text([{"call": "add(2, 3)", "expected": "5", "got": "6"}], 1, "full"))
    Failed 1 of 1 visible tests:
    add(2, 3) returned 6, expected 5
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MARKER",
    "VisibleTest",
    "agent_tests",
    "check_source",
    "docstring_tests",
    "feedback_text",
    "results",
]

MARKER = "PONDER_VISIBLE_RESULTS"
_ARROWS = ("==>", "==", "➞", "=>", "->", "→", "returns", "should return", "should be", "is")
_FOR = re.compile(r"for (\w+) = (.+?),? the output should be (.+)$", re.I)
_MAX_TESTS = 12


@dataclass(frozen=True)
class VisibleTest:
    """One test the agent may see: ``call`` (source of a call of the entry point) returns ``expected``."""

    call: str
    expected: str


def _call_end(text: str, start: int) -> int | None:
    """Index just past the parenthesised call that opens at ``text[start]`` (strings respected)."""
    depth, quote, i = 0, None, start
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _literal(text: str) -> str | None:
    """The value ``text`` starts with, as a normalised Python literal (``repr``), or None.

    ``true``/``false`` read as booleans; a worked sum ("19 - 5 - 6 = 8") reads as its result.
    """
    text = re.sub(r"\b(true|false)\b", lambda m: m[1].capitalize(), text.strip().rstrip(".,;"))
    whole = _literal_prefix(text, whole=True)
    if whole is None and "=" in text:
        whole = _literal_prefix(text.rsplit("=", 1)[1].strip(), whole=True)
    return whole if whole is not None else _literal_prefix(text, whole=False)


def _literal_prefix(text: str, whole: bool) -> str | None:
    for end in range(len(text), 0, -1) if not whole else (len(text),):
        piece = text[:end].strip()
        if not piece or piece[-1] in "+-*/=<>,":
            if whole:
                return None
            continue
        try:
            value = ast.literal_eval(piece)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        return repr(value)
    return None


def _call_ok(call: str, entry: str) -> bool:
    try:
        node = ast.parse(call, mode="eval").body
    except SyntaxError:
        return False
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == entry):
        return False
    try:
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            ast.literal_eval(arg)
    except (ValueError, SyntaxError, TypeError):
        return False
    return not any(isinstance(a, ast.Starred) for a in node.args)


def _from_line(line: str, entry: str) -> VisibleTest | None:
    """``f(args) <arrow> value`` on one line (the value may be followed by prose)."""
    start = line.find(entry + "(")
    if start < 0 or (start > 0 and (line[start - 1].isalnum() or line[start - 1] == "_")):
        return None
    end = _call_end(line, start + len(entry))
    if end is None or not _call_ok(line[start:end], entry):
        return None
    rest = line[end:].strip()
    for arrow in _ARROWS:
        if rest.startswith(arrow):
            expected = _literal(rest[len(arrow) :])
            return VisibleTest(line[start:end], expected) if expected else None
    return None


def docstring_tests(prompt: str, entry: str) -> list[VisibleTest]:
    """The examples in a HumanEval prompt: doctests (``>>> f(x)`` then the value on the next line)
    and one-line examples with an arrow. Duplicates dropped, at most 12."""
    lines = prompt.splitlines()
    found: list[VisibleTest] = []
    for i, raw in enumerate(lines):
        line = raw.strip()
        if line.startswith(">>>") and (t := _from_line(line[3:].strip(), entry)) is not None:
            found.append(t)  # ">>> f(x) == y"
        elif line.startswith(">>>"):
            call = line[3:].strip()
            value = lines[i + 1].strip() if i + 1 < len(lines) else ""
            expected = _literal(value) if value and not value.startswith(">>>") else None
            if expected and _call_ok(call, entry):
                found.append(VisibleTest(call, expected))
        elif (t := _from_line(line, entry)) is not None:
            found.append(t)
        elif (
            (m := _FOR.search(line))  # "For num = "AB" the output should be 1."
            and (arg := _literal(m[2]))
            and (want := _literal(m[3]))
            and _call_ok(f"{entry}({arg})", entry)
        ):
            found.append(VisibleTest(f"{entry}({arg})", want))
    return list(dict.fromkeys(found))[:_MAX_TESTS]


def agent_tests(text: str, entry: str, limit: int = 6) -> list[VisibleTest]:
    """Tests a model wrote: ``assert f(args) == value`` lines (anything else is ignored).

    Example:
        >>> agent_tests("assert add(1, 1) == 2\\nassert add(x, 1) == 3\\nprint(1)", "add")
        [VisibleTest(call='add(1, 1)', expected='2')]
    """
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("assert "):
            t = _from_line(line[len("assert ") :].strip(), entry)
            if t is not None:
                out.append(t)
    return list(dict.fromkeys(out))[:limit]


def check_source(tests: Sequence[VisibleTest], entry: str) -> str:
    """The test module the sandbox's tester runs: ``check(candidate)`` calls every test, records
    what each returned or raised, and fails with the results (as JSON after ``MARKER``) if any
    test failed. Floats compare with a tolerance of 1e-6."""
    cases = json.dumps([[t.call, t.expected] for t in tests])
    return f"""
import json as _json


def _same(got, want):
    if isinstance(want, float) or isinstance(got, float):
        try:
            return abs(got - want) <= 1e-6 * max(1.0, abs(want))
        except TypeError:
            return False
    return got == want


def check(candidate):
    failures = []
    for call, expected in {cases}:
        try:
            got = eval(call, {{{entry!r}: candidate}})
        except Exception as e:
            # the candidate's exception comes back as the harness's Stopped, its traceback in the text
            err = str(e).replace("your function raised:\\n", "") if type(e).__name__ == "Stopped" else type(e).__name__ + ": " + str(e)
            failures.append({{"call": call, "expected": expected, "error": err.strip()[-600:]}})
            continue
        if not _same(got, eval(expected)):
            failures.append({{"call": call, "expected": expected, "got": repr(got)[:300]}})
    if failures:
        raise AssertionError({MARKER!r} + " " + _json.dumps(failures))
"""


def results(feedback: str) -> list[dict[str, Any]] | None:
    """The failures a ``check_source`` run reported in the tester's feedback, or None if it did
    not get that far (the code did not load, or crashed the process)."""
    at = feedback.rfind(MARKER)  # the last: the traceback also shows the line that raised it
    if at < 0:
        return None
    try:
        out = json.JSONDecoder().raw_decode(feedback[at + len(MARKER) :].lstrip())[0]
    except ValueError:
        return None
    return out if isinstance(out, list) else None


def feedback_text(failures: list[dict[str, Any]], total: int, level: str) -> str:
    """Failures of the visible tests in words: ``binary`` pass/fail; ``directional`` which calls
    failed; ``full`` each failing call with what it returned or raised and what was expected."""
    if not failures:
        return f"Passed all {total} visible tests." if level != "binary" else "Passed the visible tests."
    if level == "binary":
        return "Failed the visible tests."
    head = f"Failed {len(failures)} of {total} visible tests:"
    if level == "directional":
        return head + "\n" + "\n".join(f["call"] for f in failures)
    lines = [
        f"{f['call']} raised:\n{f['error']}"
        if "error" in f
        else f"{f['call']} returned {f['got']}, expected {f['expected']}"
        for f in failures
    ]
    return head + "\n" + "\n".join(lines)
