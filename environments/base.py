"""The TextEnv seam: the Gymnasium contract with strings for observations and actions.

``reset(seed=..., options={"task_id": ...}) -> (obs, info)`` starts an episode on one
task; ``step(action) -> (obs, reward, terminated, truncated, info)`` acts. ``info``
always carries ``success`` (bool), ``score`` (float) and ``feedback`` (text an
evaluator may show the agent, never the answer). Single-step tasks (math, HumanEval)
terminate after one step.

How much the feedback says is the env's ``feedback`` level (``FEEDBACK_LEVELS``), so a
comparison of agents can hold it fixed: ``binary`` (right or wrong, the default),
``directional`` (a hint of which way: "too high", which tests failed, the score) or
``full`` (what the papers' settings showed: e.g. failing tests with their error messages).
Each env documents what its levels say.

Example:
    >>> from ponder.environments import make
    >>> env = make("math", level=1, num_tasks=5, seed=0)
    >>> obs, info = env.reset(options={"task_id": env.task_ids()[0]})
    >>> obs.startswith("What is")
    True
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, SupportsFloat, runtime_checkable

import gymnasium as gym
import numpy as np

from ponder.errors import ConfigError, EnvError, UnknownName

if TYPE_CHECKING:
    from ponder.environments.humaneval_tests import VisibleTest

__all__ = ["FEEDBACK_LEVELS", "AgentTestsEnv", "AnyText", "StepResult", "TextEnv", "check_feedback"]

StepResult = tuple[str, SupportsFloat, bool, bool, dict[str, Any]]

FEEDBACK_LEVELS = ("binary", "directional", "full")
"""How much an env's feedback says, least first."""


def check_feedback(level: str) -> str:
    """``level`` if it is one of ``FEEDBACK_LEVELS``, else a one-line ``ConfigError``."""
    if level not in FEEDBACK_LEVELS:
        raise ConfigError(f"feedback must be one of {', '.join(FEEDBACK_LEVELS)}, got {level!r}")
    return level


class AnyText(gym.spaces.Space[str]):
    """A space of all strings up to ``max_length`` characters (Gymnasium's ``Text`` has a fixed charset)."""

    def __init__(self, max_length: int = 1_000_000, seed: int | None = None):
        super().__init__(shape=None, dtype=None, seed=seed)
        self.max_length = max_length

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        n = int(self.np_random.integers(0, 16))
        return "".join(chr(int(c)) for c in self.np_random.integers(32, 127, size=n))

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"AnyText({self.max_length})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AnyText) and other.max_length == self.max_length


class TextEnv(gym.Env[str, str]):
    """Base of every ponder environment.

    Subclasses set ``name`` and implement ``task_ids``, ``_reset_task`` and ``_step``.
    The base keeps the episode bookkeeping (current task, step count, terminated flag)
    so every env enforces the contract the same way.
    """

    name: ClassVar[str] = "text-env"
    #: True when one action ends the episode (the answer is graded at once).
    single_step: ClassVar[bool] = False
    # typed as gym.Env types it (an instance attribute with a class default), so not a ClassVar;
    # Gymnasium's checker asks every env that renders for an fps, though text has no frame rate
    metadata: dict[str, Any] = {"render_modes": ["ansi"], "render_fps": 1}  # noqa: RUF012
    #: verbs of actions that cannot be undone (ScienceWorld's "focus on"): an agent takes such an
    #: action only when the model wrote that verb, never as the nearest guess to other text
    guarded_verbs: ClassVar[tuple[str, ...]] = ()
    #: whether ``verifier`` (what search uses to hear the env's verdict) reads the gold answer: a
    #: search that decides by it is an oracle. HumanEval's runs only the visible tests: not one.
    verifier_reads_answer: ClassVar[bool] = True
    #: worked (observation, reply) pairs in the env's answer format, for few-shot prompts;
    #: drawn apart from the tasks, never one of them.
    fewshot: tuple[tuple[str, str], ...] = ()

    def __init__(
        self, *, max_steps: int | None = None, render_mode: str | None = None, feedback: str = "binary"
    ):
        self.feedback = check_feedback(feedback)
        self.observation_space = AnyText()
        self.action_space = AnyText()
        self.render_mode = render_mode
        self.max_steps = max_steps
        self.task_id: str | None = None
        self._steps = 0
        self._done = True
        self._last_obs = ""

    # --- what subclasses implement -------------------------------------------------
    @abstractmethod
    def task_ids(self) -> list[str]:
        """Every task this env can reset to, in a stable order."""

    @abstractmethod
    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        """Start ``task_id``; return the first observation and info."""

    @abstractmethod
    def _step(self, action: str) -> StepResult:
        """Apply ``action`` to the running episode."""

    # --- the Gymnasium contract --------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        ids = self.task_ids()
        task_id = options.pop("task_id", None)
        if task_id is None:
            task_id = ids[int(self.np_random.integers(len(ids)))]
        elif task_id not in self._id_set():
            raise UnknownName(
                f"unknown task_id {task_id!r} for env {self.name!r}; list them with env.task_ids()"
            )
        self.task_id = str(task_id)
        self._steps = 0
        self._done = False
        obs, info = self._reset_task(self.task_id)
        self._last_obs = obs
        info = {"task_id": self.task_id, "success": False, "score": 0.0, "feedback": "", **info}
        return obs, info

    def step(self, action: str) -> StepResult:
        if self._done:
            raise EnvError(
                f"step() called on env {self.name!r} before reset() or after the episode ended; call reset()"
            )
        if not isinstance(action, str):
            raise EnvError(f"env {self.name!r} takes a str action, got {type(action).__name__}")
        self._steps += 1
        obs, reward, terminated, truncated, info = self._step(action)
        if self.max_steps is not None and self._steps >= self.max_steps and not terminated:
            truncated = True
        info = {"task_id": self.task_id, "success": False, "score": float(reward), "feedback": "", **info}
        self._done = bool(terminated or truncated)
        self._last_obs = obs
        return obs, float(reward), bool(terminated), bool(truncated), info

    @property
    def in_episode(self) -> bool:
        """True between a ``reset`` and the end of that episode (``step`` may be called)."""
        return self.task_id is not None and not self._done

    def render(self) -> str | None:
        return self._last_obs if self.render_mode == "ansi" else None

    def examples_for(self, task_id: str) -> tuple[tuple[str, str], ...]:
        """Worked (observation, reply) pairs suited to ``task_id``; by default ``fewshot``."""
        return self.fewshot

    def step_examples(self, task_id: str, separator: str = "\n\n") -> tuple[tuple[str, str], ...]:
        """``examples_for(task_id)`` with each reply written as steps joined by ``separator``.

        Step-level search and PRM labelling show the model these; by default each line of a
        reply is one step.
        """
        return tuple(
            (q, separator.join(line.strip() for line in a.splitlines() if line.strip()))
            for q, a in self.examples_for(task_id)
        )

    def verifier(self, task_id: str, seed: int | None = None) -> Callable[[str], tuple[bool, str]]:
        """``solution -> (success, feedback)`` for one task: a fresh episode graded on one step.

        What search (LATS, oracle PRMs) uses to hear the env's verdict on a whole solution.
        """

        def evaluate(solution: str) -> tuple[bool, str]:
            self.reset(seed=seed, options={"task_id": task_id})
            _, _, _, _, info = self.step(solution)
            return bool(info.get("success")), str(info.get("feedback", ""))

        return evaluate

    def outcome_feedback(self, success: bool, score: float) -> str:
        """What the agent is told when a multi-step trial ends, at this env's feedback level:
        ``binary`` whether the task was done; ``directional`` and ``full`` the score too (the
        trajectory itself the agent saw step by step).

        Example:
            >>> from ponder.environments import make
            >>> make("toy-rooms").outcome_feedback(False, 50.0)
            'The task was not completed.'
            >>> make("toy-rooms", feedback="directional").outcome_feedback(False, 50.0)
            'The task was not completed. Score 50/100.'
        """
        text = "The task was completed." if success else "The task was not completed."
        return text if self.feedback == "binary" else f"{text} Score {score:.0f}/100."

    def hidden_grade(self, task_id: str, answer: str, seed: int | None = None) -> bool | None:
        """The final grade of ``answer`` by tests the agent never sees, or None when the env has
        none (its step verdict is then the grade). The runner calls it after an episode; no
        agent, prompt or feedback ever sees what it returns (HumanEval's hidden tests)."""
        return None

    def answer_key(self, reply: str) -> str | None:
        """The final answer in ``reply``, normalised so equal answers compare equal (for voting).

        By default the text after the last ``Answer:`` line; None when there is none.
        """
        found = re.findall(r"(?im)^\s*(?:final\s+)?answer\s*[:=]\s*(.+?)\s*$", reply)
        return (found[-1].strip().rstrip(".").strip() or None) if found else None

    def task_text(self, observation: str) -> str:
        """The part of a first observation that tells this task from the others (memory's search key).

        Instructions every task shares would make all tasks look alike to an embedder, so an
        env that appends them returns the observation without them; by default the whole text.
        """
        return observation

    # --- helpers -----------------------------------------------------------------
    def _id_set(self) -> set[str]:
        cached = getattr(self, "_ids_cache", None)
        if cached is None:
            cached = set(self.task_ids())
            self._ids_cache = cached
        return cached

    @property
    def rng(self) -> np.random.Generator:
        return self.np_random


@runtime_checkable
class AgentTestsEnv(Protocol):
    """An env that also runs unit tests the agent wrote for itself (HumanEval), as Reflexion's
    programming agent does: ``isinstance(env, AgentTestsEnv)`` says whether it can."""

    def set_agent_tests(self, task_id: str, text: str) -> Sequence[VisibleTest]:
        """Read ``assert f(...) == ...`` lines from ``text`` into ``task_id``'s visible tests, for
        every later step on that task; returns the tests that could be read."""
        ...
