"""``reasoning-gym``: the procedural tasks of the reasoning-gym package, graded by its own scorers.

reasoning-gym (``pip install 'ponder[reasoning]'``) generates about a hundred kinds of task
offline from a seed: ``countdown``, ``puzzle24`` (the Game of 24 of Tree of Thoughts),
``basic_arithmetic``, ``chain_sum``, ``word_sorting``, sudoku, mazes, logic puzzles, ...
(``task_names()`` lists them). ``make("reasoning-gym", task="countdown", num_tasks=50, seed=0,
**task_config)`` builds ``num_tasks`` tasks of each named task (a name or a list of names, ids
``reasoning-gym/<task>/<i>``, interleaved); the other keywords are that task's own config
(its difficulty: ``min_numbers``, ``max_value``, ...), passed through as reasoning-gym takes them.

An episode is one step. The reply's final answer is read as reasoning-gym's prompts ask for it,
between ``<answer>`` and ``</answer>`` (the last such pair), or else from ponder's usual last
``Answer: ...`` line (an empty ``Answer:`` line takes the lines after it, up to a blank line:
answers of several lines, such as a board). The text is stripped and given to the task's own
``score_answer``; ``info["score"]`` (and the reward) is what it returns, and the task is solved
when that is 1.0.

Two guards stand before the package's scorer:

* Some scorers run the answer as code (Python's ``eval``, SymPy's ``parse_expr``: countdown,
  puzzle24, basic_arithmetic, n_queens, the integration tasks, ...). For those tasks an answer
  that could run code or hang (a call other than a math function, an attribute, a dunder, a
  string that is itself such code, a power tower) is not graded: score 0.0.
* reasoning-gym's ``puzzle24`` scorer accepts any four numbers in range (``1*2*3*4`` solves
  every task) and truncates the value to an integer, so a Game of 24 answer is also checked
  to use exactly the task's four numbers and to make exactly 24.

Feedback never gives the answer: ``binary`` says right or wrong; ``directional`` and ``full``
say what answer was read and the score the task's grader gave it (or that none was found, or
why it was not graded). Worked examples come from the same task generated with another seed,
never one of the tasks; answers that are arithmetic (countdown, puzzle24) are worked one
operation per step, with the numbers left, as Tree of Thoughts proposes them.

Example:
    >>> env = ReasoningGymEnv(task="puzzle24", num_tasks=2, seed=0)
    >>> obs, info = env.reset(options={"task_id": "reasoning-gym/puzzle24/0"})
    >>> obs.splitlines()[0]
    'Make 24 using 1, 3, 5, 9. You can only use each number once. You can use the operators +, -, *, /.'
    >>> env.step("1 * 3 = 3, 3 * 5 = 15, 15 + 9 = 24.\\nAnswer: 1*3*5 + 9")[1]
    1.0
    >>> env.reset(options={"task_id": "reasoning-gym/puzzle24/0"})[1]["task"]
    'puzzle24'
    >>> _, reward, _, _, info = env.step("Answer: 1*2*3*4")  # the package scores this 1.0
    >>> reward, info["success"]
    (0.01, False)
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import re
from collections.abc import Sequence
from dataclasses import fields
from typing import Any, ClassVar

from ponder.environments.base import StepResult, TextEnv
from ponder.environments.reasoning_gym_answers import final_answer, inert, makes_24, worked_steps
from ponder.errors import ConfigError, DependencyNotInstalled, UnknownName

__all__ = ["ReasoningGymEnv", "final_answer", "inert", "task_names", "worked_steps"]

log = logging.getLogger(__name__)

INSTRUCTION = (
    "End your reply with a line of the form 'Answer: <answer>' (for an answer of several lines, "
    "an 'Answer:' line and then the answer's lines)."
)
_PREFIX = "reasoning-gym/"
#: worked examples are generated with the env's seed plus this, far from every task's seed
_EXAMPLE_SEED = 2**31
_EXAMPLES = 2
_SHOWN = 200  # characters of an answer quoted back in feedback


# --- the package ------------------------------------------------------------------------------
def _package() -> Any:
    try:
        return importlib.import_module("reasoning_gym")
    except ImportError as e:
        raise DependencyNotInstalled.for_extra("reasoning-gym", "reasoning") from e


def _datasets() -> dict[str, Any]:
    """reasoning-gym's registry: task name -> (dataset class, config class)."""
    _package()
    return importlib.import_module("reasoning_gym.factory").DATASETS


def task_names() -> list[str]:
    """Every task reasoning-gym can generate (all offline).

    Example:
        >>> {"countdown", "puzzle24", "word_sorting"} <= set(task_names())
        True
    """
    return sorted(_datasets())


@functools.cache
def _scorer_evaluates(cls: type) -> bool:
    """Whether a dataset's module runs text as code (``eval``, ``exec``, SymPy's parsers): its
    scorer may then run the answer. Unknown source counts as yes."""
    try:
        source = inspect.getsource(inspect.getmodule(cls) or cls)
    except (OSError, TypeError):
        return True
    return cls.__name__ == "CompositeDataset" or bool(
        re.search(r"\b(?:eval|exec|parse_expr|sympify)\s*\(", source)
    )


# --- the env -----------------------------------------------------------------------------------
class ReasoningGymEnv(TextEnv):
    """Single-step reasoning-gym tasks graded by the package's own scorers (see the module docstring).

    Args:
        task: a reasoning-gym task name (``task_names()``), or a list of them to mix.
        num_tasks: tasks of each named task.
        seed: selects the tasks (the same seed gives the same tasks), 0 <= seed < 2**31.
        tasks: the same as ``task`` (``ponder run --task countdown`` sets it); give one of them.
        feedback: ``binary`` ("Correct." / "Wrong.", the default), ``directional`` (the answer
            read and its score, or why none was graded) or ``full`` (the same as directional).
        max_steps, render_mode: as every TextEnv takes them.
        **task_config: the named tasks' own config (difficulty), e.g. ``min_numbers=3``; every
            named task must take each key.
    """

    name: ClassVar[str] = "reasoning-gym"
    single_step: ClassVar[bool] = True

    def __init__(
        self,
        task: str | Sequence[str] | None = None,
        num_tasks: int = 50,
        seed: int = 0,
        *,
        tasks: str | Sequence[str] | None = None,
        max_steps: int | None = None,
        render_mode: str | None = None,
        feedback: str = "binary",
        **task_config: Any,
    ):
        super().__init__(max_steps=max_steps, render_mode=render_mode, feedback=feedback)
        if task is not None and tasks is not None:
            raise ConfigError("reasoning-gym takes task or tasks (the same option), not both; drop one")
        chosen = task if task is not None else tasks if tasks is not None else "countdown"
        names = [chosen] if isinstance(chosen, str) else list(chosen)
        if not names:
            raise ConfigError("reasoning-gym task is empty; give a task name, e.g. task='countdown'")
        known = _datasets()
        for n in names:
            if n not in known:
                raise UnknownName.for_registry("reasoning-gym task", n, known)
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ConfigError(f"reasoning-gym num_tasks must be an int >= 1, got {num_tasks!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _EXAMPLE_SEED:
            raise ConfigError(f"reasoning-gym seed must be an int in [0, 2**31), got {seed!r}")
        for key in ("size", "seed"):
            if key in task_config:
                raise ConfigError(f"reasoning-gym sets the task's {key} itself; use num_tasks and seed")
        self.tasks = tuple(dict.fromkeys(names))
        self.seed, self.num_tasks, self.task_config = seed, num_tasks, dict(task_config)
        self._data = {t: self._dataset(t, seed) for t in self.tasks}
        self._entries: dict[str, dict[str, Any]] = {}
        # examples come from another seed's tasks (two spare, in case one equals a task)
        examples = {t: self._dataset(t, seed + _EXAMPLE_SEED, _EXAMPLES + 2) for t in self.tasks}
        self._examples = {
            t: [_worked(e) for e in examples[t] if e.get("answer") is not None] for t in examples
        }
        per_task = _EXAMPLES if len(self.tasks) == 1 else 1
        self.fewshot = tuple(
            ("\n\n".join((q, INSTRUCTION)), "\n".join(steps))
            for t in self.tasks
            for q, steps in self._examples[t][:per_task]
        )

    def _dataset(self, task: str, seed: int, size: int | None = None) -> Any:
        config_cls = _datasets()[task][1]
        allowed = {f.name for f in fields(config_cls)} - {"size", "seed"}
        unknown = sorted(set(self.task_config) - allowed)
        if unknown:
            raise ConfigError(
                f"reasoning-gym task {task!r} has no option {', '.join(map(repr, unknown))}; "
                f"its options: {', '.join(sorted(allowed)) or 'none'}"
            )
        try:
            return _package().create_dataset(task, size=size or self.num_tasks, seed=seed, **self.task_config)
        except (AssertionError, ValueError, TypeError) as e:
            raise ConfigError(
                f"bad options for reasoning-gym task {task!r}: {str(e) or type(e).__name__}"
            ) from e

    # --- tasks -------------------------------------------------------------------------------
    def task_ids(self) -> list[str]:
        return [f"{_PREFIX}{t}/{i}" for i in range(self.num_tasks) for t in self.tasks]

    def entry(self, task_id: str) -> dict[str, Any]:
        """reasoning-gym's entry for ``task_id`` (question, answer, metadata): for tests and
        analysis, never for an agent (it holds the answer)."""
        if task_id not in self._entries:
            task, _, index = task_id.removeprefix(_PREFIX).rpartition("/")
            self._entries[task_id] = self._data[task][int(index)]
        return self._entries[task_id]

    def _task_of(self, task_id: str) -> str:
        return task_id.removeprefix(_PREFIX).rpartition("/")[0]

    def examples_for(self, task_id: str) -> tuple[tuple[str, str], ...]:
        """Two worked examples of the task's own kind, never the task itself."""
        return tuple((q, "\n".join(steps)) for q, steps in self._examples_of(task_id))

    def step_examples(self, task_id: str, separator: str = "\n\n") -> tuple[tuple[str, str], ...]:
        """The worked examples with one operation per step (an answer of several lines stays one step)."""
        return tuple((q, separator.join(steps)) for q, steps in self._examples_of(task_id))

    def _examples_of(self, task_id: str) -> list[tuple[str, list[str]]]:
        question = self.entry(task_id)["question"]
        pool = self._examples[self._task_of(task_id)]
        return [(f"{q}\n\n{INSTRUCTION}", steps) for q, steps in pool if q != question][:_EXAMPLES]

    def answer_key(self, reply: str) -> str | None:
        """The final answer as the scorer gets it, spaces collapsed (for voting); None without one."""
        answer = final_answer(reply)
        return " ".join(answer.split()) if answer else None

    def task_text(self, observation: str) -> str:
        """The question without the answer-format line every task shares."""
        return observation.replace(INSTRUCTION, "").strip() or observation

    # --- the episode -----------------------------------------------------------------------
    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        return f"{self.entry(task_id)['question'].strip()}\n\n{INSTRUCTION}", {"task": self._task_of(task_id)}

    def _step(self, action: str) -> StepResult:
        task_id = self.task_id or ""
        task, entry = self._task_of(task_id), self.entry(task_id)
        dataset = self._data[task]
        answer = final_answer(action)
        why = ""
        if answer is not None and _scorer_evaluates(type(dataset)) and not inert(answer):
            score, why = 0.0, "was not graded: it reads as code, not as an answer"
        else:
            try:
                score = float(dataset.score_answer(answer, entry))
            except Exception as e:  # a scorer that trips on odd text must not end the run
                log.debug("reasoning-gym %s scorer failed on %r: %r", task, answer, e)
                score, why = 0.0, f"was not graded: the task's grader could not read it ({type(e).__name__})"
            if task == "puzzle24" and score == 1.0 and not makes_24(answer, entry):
                # the package's own score for a wrong expression
                score, why = (
                    0.01,
                    "is wrong: it must use each of the four given numbers once and make exactly 24",
                )
        ok = score == 1.0
        info = {
            "success": ok,
            "score": score,
            "feedback": self._feedback(answer, score, why),
            "parsed_answer": answer,
        }
        return info["feedback"], score, True, False, info

    def _feedback(self, answer: str | None, score: float, why: str) -> str:
        if score == 1.0:
            return "Correct."
        if self.feedback == "binary":
            return "Wrong."
        if answer is None:
            return "No final answer was found. End the reply with a line 'Answer: <answer>'."
        shown = answer if len(answer) <= _SHOWN else answer[: _SHOWN - 3] + "..."
        why = why or f"is wrong (the task's grader scored it {score:g} of 1)"
        return f"The answer {shown!r} {why}."


def _worked(entry: dict[str, Any]) -> tuple[str, list[str]]:
    """An example's question and its reply as steps: arithmetic worked out, else the answer."""
    answer = str(entry["answer"]).strip()
    numbers = entry.get("metadata", {}).get("numbers")
    steps = worked_steps(answer, numbers if isinstance(numbers, list) else None)
    if steps is None:
        steps = [f"Answer:\n{answer}" if "\n" in answer else f"Answer: {answer}"]
    return entry["question"].strip(), steps
