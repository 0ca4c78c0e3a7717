"""Graders of the ``dataset`` env: read a reply's final answer and compare it with a row's gold answer.

A grader turns a row's raw gold answer into what it compares against (``gold``, which refuses an
unusable one with ``ValueError``), reads the final answer of a reply (``read``: the last
``Answer: ...`` line, ``\\boxed{...}`` or ``#### ...``; each grader has its fallback) and grades
(``grade`` -> ``Grade``). ``feedback`` words a grade at an env feedback level, never with the gold.

=========  ==================================================================================
math       ``math-verify``: LaTeX, ``\\boxed{}``, fractions, equivalent expressions
gsm8k      the gold's number after ``####`` (GSM8K's format) against the reply's final number
numeric    the numbers equal within ``tolerance``
exact      normalised exact match (case, punctuation, articles and spaces ignored)
choice     multiple choice: the letter (A-E, or as many as the options)
callable   your ``(prediction_text, gold) -> bool | float``: the final answer as read (the whole
           reply when there is none) and the row's raw gold; a float is the score, 1.0 a success
=========  ==================================================================================

Example:
    >>> g = make_grader("gsm8k")
    >>> gold = g.gold("6 bags of 7 is 6 * 7 = 42.\\n#### 42")
    >>> g.grade("6 * 7 = 42.\\nAnswer: 42", gold).correct
    True
    >>> feedback(g.grade("Answer: 40", gold), "directional", g.answer_format)
    'The final answer 40 is wrong (too low). Recheck each step.'
    >>> make_grader("math").grade("so $x = \\\\boxed{\\\\frac{2}{4}}$", "0.5").correct
    True
"""

from __future__ import annotations

import importlib
import logging
import re
import string
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

from ponder.errors import ConfigError, DependencyNotInstalled, UnknownName

__all__ = ["GRADERS", "Grade", "Grader", "feedback", "final_answer", "make_grader", "read_number"]


@dataclass(frozen=True)
class Grade:
    """One reply graded: ``answer`` is what was read (None: no final answer); ``direction`` says
    "too high" / "too low" (number graders); ``note`` why the answer could not be compared."""

    correct: bool
    score: float
    answer: str | None
    direction: str | None = None
    note: str = ""


# --- reading answers ----------------------------------------------------------------------
# "Answer: X", "**Final answer:** X", "the answer is X" and GSM8K's "#### X"
_MARKERS = re.compile(r"(?im)\banswer\s*(?::|=|\bis\b:?)[\s*]*(.+?)\s*$|####\s*(.+?)\s*$")


def _boxed(text: str) -> list[tuple[int, str]]:
    """``(position, content)`` of every ``\\boxed{...}`` / ``\\fbox{...}``, braces balanced."""
    found = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if not depth:
            found.append((m.start(), text[m.end() : i - 1].strip()))
    return found


def final_answer(text: str) -> str | None:
    """The last explicit final answer of ``text`` (``Answer: ...``, ``the answer is ...``,
    ``\\boxed{...}``, ``#### ...``), or None.

    Example:
        >>> final_answer("2 + 2 = 4.\\nAnswer: 4.")
        '4'
        >>> final_answer("so it is $\\\\boxed{\\\\frac{1}{2}}$")
        '\\\\frac{1}{2}'
        >>> final_answer("I am not sure") is None
        True
    """
    found = [(m.start(), next(g for g in m.groups() if g is not None)) for m in _MARKERS.finditer(text)]
    found += _boxed(text)
    if not found:
        return None
    answer = max(found)[1].strip(" \t*").rstrip(".").strip(" \t*")
    if inner := _boxed(answer):  # "Answer: $\boxed{5}$": the box's content
        answer = inner[-1][1]
    return answer or None


_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*/\s*\d+)?|-?\.\d+")


def read_number(text: str, last: bool = True) -> Fraction | None:
    """The last (or first) number of ``text`` (``1,200``, ``-3.5``, ``3/4``, ``\\frac{3}{4}``), exactly; or None.

    Example:
        >>> read_number("$1,200.50 in all")
        Fraction(2401, 2)
        >>> read_number("\\\\frac{3}{4}")
        Fraction(3, 4)
    """
    text = re.sub(r"\\d?frac\{\s*(-?[\d.]+)\s*\}\{\s*(-?[\d.]+)\s*\}", r"\1/\2", text)
    found = _NUM.findall(text)
    for raw in reversed(found) if last else found:
        try:
            return Fraction(raw.replace(",", "").replace(" ", ""))
        except (ValueError, ZeroDivisionError):
            continue
    return None


def _stated_number(reply: str) -> tuple[str | None, Fraction | None]:
    """The final answer of ``reply`` and its number: the first after its last ``=`` ("24 pens (4
    boxes)" is 24, "3 + 4 = 7" is 7); with no final answer, the reply's last number."""
    shown = final_answer(reply)
    if shown is None:
        return None, read_number(reply)
    got = read_number(shown.rpartition("=")[2], last=False)
    return shown, read_number(shown) if got is None else got


def format_fraction(x: Fraction) -> str:
    """``7`` or ``3/4``: how answers and worked steps write an exact number."""
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


# --- the graders ------------------------------------------------------------------------
class Grader(ABC):
    """The base: ``gold`` keeps the text, ``read`` takes the final answer, ``grade`` compares."""

    name = "grader"
    #: what the env's instruction asks the reply to end with
    answer_format = "'Answer: <answer>'"

    def gold(self, raw: Any) -> Any:
        """What replies are compared against, from a row's raw answer; ``ValueError`` if unusable."""
        return str(raw).strip()

    def read(self, reply: str) -> str | None:
        """The reply's final answer, normalised so equal answers compare equal (for voting)."""
        return final_answer(reply)

    @abstractmethod
    def grade(self, reply: str, gold: Any) -> Grade:
        """Whether ``reply`` answers ``gold``, with its score and what the feedback may say."""


class NumberGrader(Grader):
    """``numeric``: numbers equal within ``tolerance``; ``gsm8k`` (``gsm8k=True``): the gold is the
    number after GSM8K's ``####``."""

    answer_format = "'Answer: <number>'"

    def __init__(self, tolerance: float = 1e-6, gsm8k: bool = False):
        if tolerance < 0:
            raise ConfigError(f"tolerance must be >= 0, got {tolerance}")
        self.tolerance, self.name = Fraction(tolerance), "gsm8k" if gsm8k else "numeric"

    def gold(self, raw: Any) -> Fraction:
        text = str(raw)
        got = _stated_number(text)[1]
        if got is None:
            raise ValueError(f"{text[-60:]!r} holds no number")
        return got

    def read(self, reply: str) -> str | None:
        got = _stated_number(reply)[1]
        return None if got is None else format_fraction(got)

    def grade(self, reply: str, gold: Fraction) -> Grade:
        shown, got = _stated_number(reply)
        if got is None:
            note = "It holds no number." if shown else ""
            return Grade(False, 0.0, shown, note=note)
        ok = abs(got - gold) <= self.tolerance
        direction = None if ok else ("too high" if got > gold else "too low")
        return Grade(ok, float(ok), format_fraction(got), direction)


class ExactGrader(Grader):
    """``exact``: equal after SQuAD's normalisation (lower case, no punctuation, articles or extra spaces)."""

    name = "exact"

    @staticmethod
    def normalise(text: str) -> str:
        text = re.sub(r"\\text\{([^}]*)\}", r"\1", text).lower()
        text = "".join(c for c in text if c not in string.punctuation)
        return " ".join(w for w in text.split() if w not in ("a", "an", "the"))

    def gold(self, raw: Any) -> str:
        norm = self.normalise(final_answer(str(raw)) or str(raw))
        if not norm:
            raise ValueError(f"{raw!r} is empty once normalised")
        return norm

    def read(self, reply: str) -> str | None:
        text = final_answer(reply) or (reply.strip() if "\n" not in reply.strip() else "")
        return self.normalise(text) or None

    def grade(self, reply: str, gold: str) -> Grade:
        got = self.read(reply)
        ok = got == gold
        return Grade(ok, float(ok), None if got is None else final_answer(reply) or reply.strip())


class ChoiceGrader(Grader):
    """``choice``: the option's letter (the gold may be a letter, or its 0-based index)."""

    name = "choice"
    answer_format = "'Answer: <letter>'"

    def __init__(self, letters: str = "ABCDE"):
        self.letters = letters

    def gold(self, raw: Any) -> str:
        if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(self.letters):
            return self.letters[raw]
        m = re.fullmatch(r"\s*\(?([A-Za-z])[).:]?\s*", str(raw))
        if not m or m.group(1).upper() not in self.letters:
            raise ValueError(f"{raw!r} is not one of the letters {self.letters[0]}-{self.letters[-1]}")
        return m.group(1).upper()

    def read(self, reply: str) -> str | None:
        upper, both = f"[{self.letters}]", f"[{self.letters}{self.letters.lower()}]"
        shown = final_answer(reply)
        if shown is None:  # no marker: only a reply that is nothing but a letter
            m = re.fullmatch(rf"\s*\(?({both})[).:]?\s*", reply)
        else:  # "B", "(B) Paris", "Paris (B)", "option B"
            m = (
                re.match(rf"\(?({both})\b", shown)
                or re.search(rf"\(({both})\)", shown)
                or re.search(rf"\b({upper})\b", shown)
            )
        return m.group(1).upper() if m else None

    def grade(self, reply: str, gold: str) -> Grade:
        got = self.read(reply)
        shown = final_answer(reply)
        if got is None and shown:
            return Grade(False, 0.0, shown, note="Reply with the letter of one option.")
        return Grade(got == gold, float(got == gold), got)


class MathGrader(Grader):
    """``math``: ``math_verify.parse`` both answers and ``math_verify.verify`` them (equivalent
    LaTeX, ``\\boxed{}``, fractions and decimals)."""

    name = "math"

    def __init__(self) -> None:
        try:
            import math_verify  # noqa: F401
        except ImportError as e:
            raise DependencyNotInstalled.for_extra("math-verify", "datasets") from e
        for name in ("math_verify.grader", "math_verify.parser"):
            logging.getLogger(name).addFilter(_TIMEOUT_OFF)  # the same filter object: added once

    def gold(self, raw: Any) -> str:
        text = str(raw).strip()
        if not text:
            raise ValueError("the answer is empty")
        return text

    def read(self, reply: str) -> str | None:
        got = final_answer(reply)
        return None if got is None else re.sub(r"\s+|^\$|\$$", "", got)

    def grade(self, reply: str, gold: str) -> Grade:
        from math_verify import verify

        shown = final_answer(reply)
        want = _parse_math(gold)
        got = _parse_math(shown) if shown else _parse_math(reply, whole=True)
        if not got:
            return Grade(
                False, 0.0, shown, note="It could not be read as a mathematical expression." if shown else ""
            )
        answer = shown or str(got[-1])
        if not want:  # the gold is not mathematics: compare the text
            ok = ExactGrader.normalise(answer) == ExactGrader.normalise(final_answer(gold) or gold)
            return Grade(ok, float(ok), answer)
        ok = bool(verify(list(want), list(got), timeout_seconds=_timeout()))
        return Grade(ok, float(ok), answer, None if ok else _direction(got[0], want[0]))


class _TimeoutOff(logging.Filter):
    """Off the main thread the graders run without math-verify's timeouts on purpose: no warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


_TIMEOUT_OFF = _TimeoutOff()


def _timeout() -> int | None:
    """math-verify's timeouts use SIGALRM, which only the main thread may set (the runner grades in threads)."""
    return 5 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _parse_math(text: str, whole: bool = False) -> tuple[Any, ...]:
    from math_verify import parse

    delimited = whole or any(d in text for d in ("$", "\\boxed", "\\(", "\\["))
    # a bare answer (\sqrt{2}, \dfrac{1}{2}) is read as LaTeX only between dollars
    found = parse(text if delimited else f"${text}$", parsing_timeout=_timeout())  # type: ignore[arg-type]
    if not found and not delimited:
        found = parse(text, parsing_timeout=_timeout())  # type: ignore[arg-type]
    return tuple(found)


def _direction(got: Any, want: Any) -> str | None:
    try:
        if got.is_number and want.is_number and got.is_real and want.is_real:
            return None if got == want else "too high" if got > want else "too low"
    except (AttributeError, TypeError, ValueError):
        pass
    return None


class CallableGrader(Grader):
    """Your function ``(prediction_text, gold) -> bool | float`` (a float is the score, 1.0 a success)."""

    def __init__(self, fn: Callable[[str, Any], bool | float]):
        self.fn, self.name = fn, getattr(fn, "__name__", "callable")

    def gold(self, raw: Any) -> Any:
        return raw

    def grade(self, reply: str, gold: Any) -> Grade:
        shown = final_answer(reply)
        result = self.fn(shown or reply.strip(), gold)
        if not isinstance(result, (bool, int, float)):
            raise ConfigError(f"grader {self.name!r} returned {result!r}; it must return a bool or a float")
        score = float(result)
        return Grade(score >= 1.0, score, shown)


GRADERS: dict[str, Callable[..., Grader]] = {
    "math": lambda **kw: MathGrader(),
    "gsm8k": lambda tolerance=1e-6, **kw: NumberGrader(tolerance, gsm8k=True),
    "numeric": lambda tolerance=1e-6, **kw: NumberGrader(tolerance),
    "exact": lambda **kw: ExactGrader(),
    "choice": lambda letters="ABCDE", **kw: ChoiceGrader(letters),
}
"""Built-in graders by name (``make_grader`` also takes ``"module:function"`` and callables)."""


def make_grader(spec: str | Callable[[str, Any], bool | float] | Grader, **options: Any) -> Grader:
    """A grader from a name in ``GRADERS``, ``"module:function"``, a callable or a ``Grader``.

    ``options`` go to the built-in ones: ``tolerance`` (numeric, gsm8k), ``letters`` (choice).

    Example:
        >>> make_grader("numeric", tolerance=0.01).grade("Answer: 3.14", Fraction(314159, 100000)).correct
        True
        >>> make_grader(lambda pred, gold: pred == gold).grade("Answer: Paris", "Paris").correct
        True
    """
    if isinstance(spec, Grader):
        return spec
    if callable(spec):
        return CallableGrader(spec)
    if ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(
                f"cannot import grader {spec!r} ({e}); pass module:function of an importable module"
            ) from e
        return make_grader(fn)
    if spec not in GRADERS:
        raise UnknownName.for_registry("grader", spec, [*GRADERS, "auto", "module:function"])
    return GRADERS[spec](**options)


def feedback(grade: Grade, level: str, answer_format: str = Grader.answer_format) -> str:
    """What the agent is told about ``grade`` at feedback ``level``; never the gold answer.

    ``binary``: right or wrong. ``directional`` and ``full`` (past which way the answer is off, all a
    question-answer task could show is the answer itself): also that no final answer was found,
    that it could not be read, or that it is too high / too low.

    Example:
        >>> feedback(Grade(False, 0.0, None), "full")
        "No final answer was found. End the reply with a line of the form 'Answer: <answer>'."
    """
    if grade.correct:
        return "Correct."
    if level == "binary":
        return "Wrong."
    if grade.answer is None:
        return f"No final answer was found. End the reply with a line of the form {answer_format}."
    shown = grade.answer if len(grade.answer) <= 60 else grade.answer[:57] + "..."
    text = f"The final answer {shown} is wrong"
    text += f" ({grade.direction})." if grade.direction else "."
    return f"{text} {grade.note or 'Recheck each step.'}"
