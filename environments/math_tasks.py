"""``math``: procedurally generated arithmetic tasks with an exact-answer verifier.

Levels, from what SmolLM2-135M sometimes solves to what it rarely does:

====  ======================================================
1     single-digit addition (``What is 3 + 5?``)
2     two-digit addition and subtraction
3     multiplication and mixed two-operand problems
4     multi-step expressions with parentheses
5     short word problems (two or three operations)
====  ======================================================

Tasks are a pure function of ``(seed, level, index)``, so the same seed always gives
the same task list. The verifier reads the final answer robustly (``Answer: 12``,
``\\boxed{12}``, ``#### 12``, ``= 12``, or the last number) and the feedback says what
was wrong without giving the answer away.

Example:
    >>> env = MathEnv(level=1, num_tasks=2, seed=0)
    >>> obs, info = env.reset(options={"task_id": "math/L1/0"})
    >>> answer = env.tasks["math/L1/0"].answer
    >>> env.step(f"Answer: {answer}")[4]["success"]
    True
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ponder.environments.base import StepResult, TextEnv
from ponder.environments.graders import format_fraction
from ponder.errors import ConfigError

__all__ = ["PHRASINGS", "MathEnv", "MathTask", "feedback_for", "generate_task", "in_words", "parse_answer"]

INSTRUCTION = "Solve the problem. End your reply with a line of the form 'Answer: <number>'."
LEVELS = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class MathTask:
    task_id: str
    level: int
    question: str
    answer: Fraction
    #: a worked solution, for few-shot examples and for checking a PRM
    solution: str = ""


# --- generation -------------------------------------------------------------------

Generated = tuple[str, int, str]  # question, answer, worked solution


def _level1(r: random.Random) -> Generated:
    a, b = r.randint(1, 9), r.randint(1, 9)
    return f"What is {a} + {b}?", a + b, f"{a} + {b} = {a + b}."


def _level2(r: random.Random) -> Generated:
    a, b = r.randint(10, 99), r.randint(10, 99)
    if r.random() < 0.5:
        return f"What is {a} + {b}?", a + b, f"{a} + {b} = {a + b}."
    a, b = max(a, b), min(a, b)
    return f"What is {a} - {b}?", a - b, f"{a} - {b} = {a - b}."


def _level3(r: random.Random) -> Generated:
    kind = r.choice(["mul", "mul", "addmul", "submul"])
    if kind == "mul":
        a, b = r.randint(2, 12), r.randint(2, 12)
        return f"What is {a} * {b}?", a * b, f"{a} * {b} = {a * b}."
    a, b, c = r.randint(2, 20), r.randint(2, 9), r.randint(2, 9)
    if kind == "addmul":
        return (
            f"What is {a} + {b} * {c}?",
            a + b * c,
            f"{b} * {c} = {b * c}, then {a} + {b * c} = {a + b * c}.",
        )
    return f"What is {b} * {c} - {a}?", b * c - a, f"{b} * {c} = {b * c}, then {b * c} - {a} = {b * c - a}."


def _level4(r: random.Random) -> Generated:
    a, b, c, d = (r.randint(2, 15) for _ in range(4))
    form = r.randrange(3)
    if form == 0:
        ans = (a + b) * c - d
        return (
            f"What is ({a} + {b}) * {c} - {d}?",
            ans,
            f"{a} + {b} = {a + b}, {a + b} * {c} = {(a + b) * c}, {(a + b) * c} - {d} = {ans}.",
        )
    if form == 1:
        ans = a * (b + c) + d
        return (
            f"What is {a} * ({b} + {c}) + {d}?",
            ans,
            f"{b} + {c} = {b + c}, {a} * {b + c} = {a * (b + c)}, {a * (b + c)} + {d} = {ans}.",
        )
    q = r.randint(2, 9)
    ans = a + b - c * d + q
    work = f"{a} + {b} = {a + b}, {c} * {d} = {c * d}, {q * 2} / 2 = {q}, {a + b} - {c * d} + {q} = {ans}."
    return f"What is ({a} + {b}) - ({c} * {d}) + {q * 2} / 2?", ans, work


_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun"]
_THINGS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps", "shells", "books"]


def _level5(r: random.Random) -> Generated:
    name, other = r.sample(_NAMES, 2)
    thing = r.choice(_THINGS)
    form = r.randrange(3)
    if form == 0:
        a, b, c = r.randint(10, 40), r.randint(2, 9), r.randint(2, 12)
        q = (
            f"{name} has {a} {thing}. {name} gives {b} to {other} and then buys {c} more. "
            f"How many {thing} does {name} have now?"
        )
        return q, a - b + c, f"{a} - {b} = {a - b}, then {a - b} + {c} = {a - b + c}."
    if form == 1:
        boxes, per, extra = r.randint(2, 9), r.randint(3, 12), r.randint(1, 9)
        q = (
            f"{name} buys {boxes} boxes of {thing} with {per} {thing} in each box, "
            f"and finds {extra} more. How many {thing} does {name} have?"
        )
        return (
            q,
            boxes * per + extra,
            f"{boxes} * {per} = {boxes * per}, then {boxes * per} + {extra} = {boxes * per + extra}.",
        )
    people, each, kept = r.randint(2, 6), r.randint(2, 9), r.randint(1, 9)
    total = people * each + kept
    q = (
        f"{name} has {total} {thing}, keeps {kept} and shares the rest equally "
        f"among {people} friends. How many {thing} does each friend get?"
    )
    return q, each, f"{total} - {kept} = {total - kept}, then {total - kept} / {people} = {each}."


_GENERATORS = {1: _level1, 2: _level2, 3: _level3, 4: _level4, 5: _level5}

PHRASINGS = ("plain", "words")
_WORDS = [
    (
        re.compile(r"^What is (\d+) \+ (\d+)\?$"),
        "{n} has {0} {t} and finds {1} more. How many {t} does {n} have now?",
    ),
    (
        re.compile(r"^What is (\d+) - (\d+)\?$"),
        "{n} has {0} {t} and gives {1} of them to {o}. How many {t} does {n} have left?",
    ),
    (
        re.compile(r"^What is (\d+) \* (\d+)\?$"),
        "{n} buys {0} bags with {1} {t} in each bag. How many {t} is that in all?",
    ),
    (
        re.compile(r"^What is (\d+) \+ (\d+) \* (\d+)\?$"),
        "{n} has {0} {t} and buys {1} packs of {2} {t} each. How many {t} does {n} have now?",
    ),
    (
        re.compile(r"^What is (\d+) \* (\d+) - (\d+)\?$"),
        "{n} buys {0} packs of {1} {t} each and gives {2} {t} to {o}. How many {t} does {n} keep?",
    ),
]


def in_words(task: MathTask, seed: int) -> MathTask:
    """The same task (same numbers, same answer) phrased as a word problem: the held-out
    *transfer* set of a model trained on the plain phrasing (levels 1-3; levels 4-5 unchanged).

    Example:
        >>> in_words(generate_task(0, 1, 0), seed=0).question
        'Ivo has 9 stickers and finds 4 more. How many stickers does Ivo have now?'
    """
    r = random.Random(f"ponder-math-words/{seed}/{task.task_id}")
    name, other = r.sample(_NAMES, 2)
    thing = r.choice(_THINGS)
    for pattern, template in _WORDS:
        if m := pattern.match(task.question):
            question = template.format(*m.groups(), n=name, o=other, t=thing)
            return MathTask(
                task.task_id.replace("math/", "math-words/"), task.level, question, task.answer, task.solution
            )
    return MathTask(
        task.task_id.replace("math/", "math-words/"), task.level, task.question, task.answer, task.solution
    )


def generate_task(seed: int, level: int, index: int) -> MathTask:
    """The task at ``index`` of level ``level`` for ``seed`` (pure and reproducible)."""
    if level not in _GENERATORS:
        raise ConfigError(f"math level must be one of {LEVELS}, got {level!r}")
    r = random.Random(f"ponder-math/{seed}/{level}/{index}")
    question, answer, solution = _GENERATORS[level](r)
    return MathTask(f"math/L{level}/{index}", level, question, Fraction(answer), solution)


# --- verification -----------------------------------------------------------------
_NUM = r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?"
_PATTERNS = [
    re.compile(r"\\boxed\{\s*(" + _NUM + r")\s*\}"),
    re.compile(r"answer\s*(?:is|:|=)?\s*[:=]?\s*\$?\s*(" + _NUM + r")", re.IGNORECASE),
    re.compile(r"####\s*(" + _NUM + r")"),
]


def _to_fraction(s: str) -> Fraction | None:
    s = s.replace(",", "").replace(" ", "")
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def parse_answer(text: str) -> Fraction | None:
    """Read the final answer from a model's reply; None when there is none.

    The last explicit marker wins (``\\boxed{}``, ``Answer:``, ``####``); without one,
    the last number of the reply.

    Example:
        >>> parse_answer("3 + 4 = 7. So the answer is 7.")
        Fraction(7, 1)
        >>> parse_answer("Answer: 1,200") == 1200
        True
        >>> parse_answer("I am not sure.") is None
        True
    """
    for pat in _PATTERNS:
        found = pat.findall(text)
        if found:
            return _to_fraction(found[-1])
    numbers = re.findall(_NUM, text)
    return _to_fraction(numbers[-1]) if numbers else None


def feedback_for(reply: str, answer: Fraction, level: str = "directional") -> tuple[bool, str]:
    """Grade ``reply``; return (success, feedback that does not reveal the answer).

    ``binary`` says right or wrong; ``directional`` (and ``full``: arithmetic has nothing more
    to show without giving the answer away) also says whether no answer was found or which way
    the answer is off.

    Example:
        >>> feedback_for("Answer: 7", Fraction(5), "binary")
        (False, 'Wrong.')
        >>> feedback_for("Answer: 7", Fraction(5))[1]
        'The final answer 7 is wrong (too high). Recheck each operation step by step.'
    """
    got = parse_answer(reply)
    if got == answer:
        return True, "Correct."
    if level == "binary":
        return False, "Wrong."
    if got is None:
        return False, "No final answer was found. End the reply with a line 'Answer: <number>'."
    direction = "too high" if got > answer else "too low"
    return (
        False,
        f"The final answer {format_fraction(got)} is wrong ({direction}). Recheck each operation step by step.",
    )


def _worked_example(task: MathTask) -> tuple[str, str]:
    """A (question, reply) pair that shows the answer format on a task outside the task list."""
    return f"{task.question}\n{INSTRUCTION}", f"{task.solution}\nAnswer: {format_fraction(task.answer)}"


# --- the env ----------------------------------------------------------------------
class MathEnv(TextEnv):
    """Single-step arithmetic tasks graded by an exact verifier.

    Args:
        level: 1-5, or a list of levels to mix.
        num_tasks: tasks per level.
        seed: selects the task list (the same seed gives the same tasks).
        phrasing: ``plain`` ("What is 9 + 4?") or ``words`` (the same tasks as word problems,
            ids ``math-words/...``: a transfer set for a model trained on the plain phrasing).
        feedback: ``binary`` ("Correct." / "Wrong.", the default), ``directional`` (no answer
            found, or too high / too low) or ``full`` (the same as directional).
    """

    name = "math"
    single_step = True

    def __init__(
        self,
        level: int | list[int] = 1,
        num_tasks: int = 100,
        seed: int = 0,
        phrasing: str = "plain",
        **kw: Any,
    ):
        super().__init__(**kw)
        if phrasing not in PHRASINGS:
            raise ConfigError(f"math phrasing must be one of {', '.join(PHRASINGS)}, got {phrasing!r}")
        levels = [level] if isinstance(level, int) else list(level)
        if not levels or any(lv not in LEVELS for lv in levels):
            raise ConfigError(f"math level must be in {LEVELS} (or a list of them), got {level!r}")
        if num_tasks < 1:
            raise ConfigError(f"math num_tasks must be >= 1, got {num_tasks}")
        self.seed = seed
        # levels interleave (L1/0, L2/0, ..., L1/1, ...): the first N tasks mix every level
        phrase = (lambda t: in_words(t, seed)) if phrasing == "words" else (lambda t: t)
        self.tasks = {
            t.task_id: t
            for i in range(num_tasks)
            for t in (phrase(generate_task(seed, lv, i)) for lv in levels)
        }
        # examples come from another seed's task stream, so they are never test tasks
        self._examples = {
            lv: tuple(_worked_example(phrase(generate_task(-1 - seed, lv, i))) for i in range(2))
            for lv in levels
        }
        self.fewshot = tuple(ex for lv in levels for ex in self._examples[lv][: 2 if len(levels) == 1 else 1])

    def task_ids(self) -> list[str]:
        return list(self.tasks)

    def examples_for(self, task_id: str) -> tuple[tuple[str, str], ...]:
        """Two worked examples of the task's own level (a mixed set misleads small models)."""
        return self._examples[self.tasks[task_id].level]

    def step_examples(self, task_id: str, separator: str = "\n\n") -> tuple[tuple[str, str], ...]:
        """Worked examples with one operation per step: ``12 + 7 = 19.``, ``5 * 19 = 95.``, ``Answer: 103``."""
        out = []
        for q, a in self.examples_for(task_id):
            steps = [
                s.strip().rstrip(".") + "."
                for line in a.splitlines()
                if not line.startswith("Answer:")
                for s in re.split(r",\s*(?:then\s+)?", line)
                if s.strip()
            ]
            out.append((q, separator.join([*steps, a.splitlines()[-1]])))
        return tuple(out)

    def answer_key(self, reply: str) -> str | None:
        """The number the verifier would read (``1/2``, ``12``), or None."""
        got = parse_answer(reply)
        return None if got is None else format_fraction(got)

    def task_text(self, observation: str) -> str:
        """The question without the instruction every task shares."""
        return observation.replace(INSTRUCTION, "").strip() or observation

    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        task = self.tasks[task_id]
        return f"{task.question}\n{INSTRUCTION}", {"level": task.level}

    def _step(self, action: str) -> StepResult:
        task = self.tasks[self.task_id or ""]
        ok, feedback = feedback_for(action, task.answer, self.feedback)
        got = parse_answer(action)
        info = {
            "success": ok,
            "feedback": feedback,
            "parsed_answer": None if got is None else format_fraction(got),
        }
        return feedback, 1.0 if ok else 0.0, True, False, info
