"""ScienceWorld: 30 elementary-science tasks in a text simulator (Wang et al., 2022).

Each task (boil water, grow a plant, test conductivity, ...) has variations (7,207 in all),
split into train, dev and test by the ``scienceworld`` package (``pip install
'ponder[scienceworld]'``; it runs a Java simulator, so Java 8 or newer must be on PATH).
Task ids are ``"scienceworld/<task>/<variation>"``, round-robin over the chosen tasks, so
the first N ids cover every task before repeating one.

The first observation is the task description, a blank line, then the room the agent is
in. ``info`` carries ``admissible_actions`` (the package's valid action-object
combinations), ``task_description``, ``score`` (0-100), ``success`` (score 100),
``failed`` (the package scored the task negative: reported as score 0), ``moves`` and
``feedback`` (the observation). The reward is the change of the score, so rewards sum to
the final score minus the starting one, ``info["score"]`` from ``reset`` (0 on most tasks;
the ``find-*`` tasks start at 8, some ``grow-fruit`` variations at 2-11). An ambiguous
action gets a numbered list back, and the admissible actions are then the numbers.

The simulator's world is a pure function of the task and the actions, but its text is not:
it lists a room's objects in a different order each time the task is loaded, and names an
object in the valid actions by a random one of the phrases that pick it out ("red paint",
"paint in wood cup", ...), even twice in one state. So that the same actions give the same
observation and ``admissible_actions`` (as Gymnasium's ``check_env`` asks: it replays a seeded
step and compares), an env remembers the text it gave each state (the task, the actions since
``reset``, and what the agent sees and holds, as multisets of words) and gives it again when
the simulator's text has the same words; the last ``_SEEN_STATES`` states, per env.

Each env starts one JVM on first use and stops it on ``close()`` (or when the env is
garbage collected, or at interpreter exit).

Example:
    >>> env = ScienceWorldEnv(tasks=["boil", "find-pl"], variations=2)  # no JVM yet
    >>> env.tasks
    ('boil', 'find-plant')
    >>> env.task_ids()  # doctest: +SKIP
    ['scienceworld/boil/0', 'scienceworld/find-plant/0', 'scienceworld/boil/1', 'scienceworld/find-plant/1']
    >>> obs, info = env.reset(options={"task_id": "scienceworld/boil/0"})  # doctest: +SKIP
    >>> env.task_text(obs)  # doctest: +SKIP
    'Your task is to boil water. For compounds without a boiling point, ...'
    >>> for action in env.walkthrough("scienceworld/boil/0"):  # doctest: +SKIP
    ...     obs, reward, terminated, truncated, info = env.step(action)
    ...     if terminated or truncated:
    ...         break
    >>> env.close()
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import itertools
import logging
import os
import re
import shutil
import subprocess
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from types import ModuleType
from typing import Any, ClassVar

from ponder.environments.base import StepResult, TextEnv
from ponder.errors import ConfigError, DependencyNotInstalled, EnvError, UnknownName

__all__ = ["SIMPLIFICATIONS", "SPLITS", "ScienceWorldEnv", "java_children", "resolve_task", "task_names"]

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
#: the package's simplifications; "easy" is its preset of them (it picks the ones that suit the task)
SIMPLIFICATIONS = (
    "easy",
    "teleportAction",
    "selfWateringFlowerPots",
    "openContainers",
    "openDoors",
    "noElectricalAction",
)
#: the jar is compiled for Java 8 (class file version 52)
MIN_JAVA = 8
_INSTALL_JAVA = "install it, e.g.: apt install openjdk-17-jre-headless"
_PREFIX = "scienceworld/"
# The base class truncates at max_steps; the package's own step limit must never fire first.
_NO_STEP_LIMIT = 10**9
_SEEN_STATES = 256


def java_children(parent: int | None = None) -> set[int]:
    """Pids of live ``java`` processes whose parent is ``parent`` (default this process), from /proc.

    What to check for leaked simulators: after every env is closed it is empty.

    Example:
        >>> java_children() <= java_children()
        True
    """
    me, found = parent or os.getpid(), set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if comm == "java" and int(rest[1]) == me and rest[0] != "Z":
            found.add(int(pid))
    return found


def _package() -> ModuleType:
    try:
        return importlib.import_module("scienceworld")
    except ImportError:
        raise DependencyNotInstalled.for_extra("scienceworld", "scienceworld") from None


@functools.lru_cache(maxsize=1)
def task_names() -> tuple[str, ...]:
    """The package's 30 task names, in its task-id order (1-1 boil, 1-2 melt, ...)."""
    _package()
    return tuple(importlib.import_module("scienceworld.constants").ID2TASK.values())


def resolve_task(name: str) -> str:
    """The task a name means: a package name, id (``"1-1"``), paper name, or unique prefix or part.

    Example:
        >>> resolve_task("boil"), resolve_task("1-2"), resolve_task("thermometer")
        ('boil', 'melt', 'use-thermometer')
    """
    names = task_names()
    infer_task = importlib.import_module("scienceworld.utils").infer_task
    key = infer_task(name.strip()).lower().replace("_", "-").replace(" ", "-")
    if key in names:
        return key
    hits = [n for n in names if n.startswith(key)] or [n for n in names if key and key in n]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise UnknownName(
            f"ScienceWorld task {name!r} is ambiguous ({', '.join(hits)}); give more of the name"
        )
    close = difflib.get_close_matches(key, names, n=4, cutoff=0.5)
    hint = f"did you mean: {', '.join(close)}" if close else f"choose one of: {', '.join(names)}"
    raise UnknownName(f"unknown ScienceWorld task {name!r}; {hint}")


def _parse_simplifications(text: str, tasks: tuple[str, ...]) -> str:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if p not in SIMPLIFICATIONS]
    if bad:
        raise ConfigError(
            f"unknown ScienceWorld simplification {bad[0]!r}; use '' or a comma-separated list of: "
            f"{', '.join(SIMPLIFICATIONS)}"
        )
    electrical = [t for t in tasks if "power-component" in t or "conductivity" in t]
    if "noElectricalAction" in parts and electrical:
        raise ConfigError(
            f"simplification noElectricalAction removes the actions task {electrical[0]!r} needs; drop one of them"
        )
    return ",".join(parts)


@functools.lru_cache(maxsize=8)
def _java_major(java: str) -> int | None:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if m is None:
        return None
    major = int(m[1])
    return int(m[2] or 0) if major == 1 else major  # "1.8.0_392" is Java 8


def _check_java() -> None:
    """Fail with the fix before py4j launches ``java`` from PATH (its own error is a bare ValueError)."""
    java = shutil.which("java")
    if java is None:
        raise DependencyNotInstalled(
            f"ScienceWorld needs Java {MIN_JAVA}+ and no java is on PATH; {_INSTALL_JAVA}"
        )
    major = _java_major(java)
    if major is None or major < MIN_JAVA:
        raise DependencyNotInstalled(
            f"ScienceWorld needs Java {MIN_JAVA}+ but {java} is version {major or 'unknown'}; {_INSTALL_JAVA}"
        )


def _shutdown(sim: Any) -> None:
    """Stop the package's JVM and wait for it (the package's own close() does not wait)."""
    proc = getattr(getattr(sim, "_gateway", None), "java_process", None)
    try:
        sim.close()
    except Exception as e:  # a JVM that already died cannot be shut down politely
        log.debug("ScienceWorld close failed: %s", e)
    # The package's __del__ closes again and py4j logs tracebacks for the dead gateway.
    sim.close = lambda: None
    if proc is not None:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):  # else each is a ResourceWarning
            if pipe is not None:
                pipe.close()
    tmp = getattr(sim, "_obj_tree_tempdir", None)  # the package's own temp dir, left to the GC
    if tmp is not None:
        tmp.cleanup()


@contextlib.contextmanager
def _jvm_errors() -> Iterator[None]:
    from py4j.protocol import Py4JError

    try:
        yield
    except Py4JError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EnvError(f"the ScienceWorld simulator failed ({first}); call env.close() and reset()") from e


class ScienceWorldEnv(TextEnv):
    """ScienceWorld tasks and variations, one JVM per env (see the module docstring).

    Args:
        tasks: a task name, a list of names, or None for all 30; names as ``resolve_task`` reads them.
        split: ``"train"`` (default), ``"dev"`` or ``"test"``, as the package splits the variations.
        variations: the first K variations of the split per task; None for all.
        simplifications: the package's simplification string; ``"easy"`` (default, as in CLIN
            and Reflexion-style papers) or ``""`` for none, or a comma-separated list.
        max_steps: actions per episode before it is truncated (None for no limit).
        jar_path: a ScienceWorld jar to run instead of the package's own.
    """

    name: ClassVar[str] = "scienceworld"
    #: "focus on X" commits to X as the task's subject: the wrong X fails the task at once, so an
    #: agent should take it only when the model asked for it, never as a guess (see ``Grounder``)
    guarded_verbs: ClassVar[tuple[str, ...]] = ("focus",)

    def __init__(
        self,
        *,
        tasks: str | list[str] | None = None,
        split: str = "train",
        variations: int | None = None,
        simplifications: str = "easy",
        max_steps: int | None = 100,
        jar_path: str | None = None,
        render_mode: str | None = None,
        feedback: str = "binary",
    ):
        super().__init__(max_steps=max_steps, render_mode=render_mode, feedback=feedback)
        if split not in SPLITS:
            raise ConfigError(f"ScienceWorld split must be one of {', '.join(SPLITS)}, got {split!r}")
        if variations is not None and (isinstance(variations, bool) or int(variations) < 1):
            raise ConfigError(f"ScienceWorld variations must be None or >= 1, got {variations!r}")
        if max_steps is not None and max_steps < 1:
            raise ConfigError(f"ScienceWorld max_steps must be None or >= 1, got {max_steps!r}")
        if jar_path is not None and not os.path.isfile(jar_path):
            raise ConfigError(f"ScienceWorld jar_path {jar_path!r} is not a file; give a jar or None")
        names = task_names() if tasks is None else [tasks] if isinstance(tasks, str) else tasks
        self.tasks = tuple(dict.fromkeys(resolve_task(t) for t in names))
        if not self.tasks:
            raise ConfigError("ScienceWorld tasks is empty; give task names or None for all")
        self.split = split
        self.variations = None if variations is None else int(variations)
        self.simplifications = _parse_simplifications(simplifications, self.tasks)
        self.jar_path = jar_path
        self._sim: Any = None
        self._finalizer: weakref.finalize | None = None
        self._splits: dict[tuple[str, str], list[int]] = {}
        self._ids: list[str] | None = None
        self._gold: dict[str, list[str]] = {}
        self._description = ""
        self._score = 0
        self._actions: list[str] = []  # since reset
        self._seen: OrderedDict[tuple[Any, ...], tuple[str, list[str]]] = OrderedDict()

    # --- the simulator -------------------------------------------------------------
    @property
    def simulator(self) -> Any:
        """The package's ``ScienceWorldEnv``, started on first use (loading a task on it replaces the episode)."""
        if self._sim is None:
            _check_java()
            t0 = time.perf_counter()
            sim = _package().ScienceWorldEnv(serverPath=self.jar_path, envStepLimit=_NO_STEP_LIMIT)
            self._finalizer = weakref.finalize(self, _shutdown, sim)
            self._sim = sim
            log.info("ScienceWorld JVM started in %.1f s", time.perf_counter() - t0)
        return self._sim

    def close(self) -> None:
        """Stop the JVM (idempotent); the env starts a new one if used again."""
        if self._finalizer is not None:
            self._finalizer()
        self._sim, self._finalizer, self._done = None, None, True
        super().close()

    # --- tasks -----------------------------------------------------------------------
    def split_variations(self, task: str, split: str | None = None) -> list[int]:
        """Every variation of ``task`` in ``split`` (default the env's), as the package splits them."""
        task, split = resolve_task(task), split or self.split
        if split not in SPLITS:
            raise ConfigError(f"ScienceWorld split must be one of {', '.join(SPLITS)}, got {split!r}")
        if (task, split) not in self._splits:
            sim = self.simulator
            set_task = getattr(sim.server, "taskStr_$eq")
            before = sim.server.taskStr()
            # The split getters read only the server's task name: setting it skips load(),
            # which builds the task's world (0.05-0.8 s a task, about 7 s for all 30).
            with _jvm_errors():
                set_task(task)
                try:
                    got = (sim.get_variations_train(), sim.get_variations_dev(), sim.get_variations_test())
                finally:
                    set_task(before)
            self._splits |= {(task, s): [int(v) for v in vs] for s, vs in zip(SPLITS, got, strict=True)}
        return list(self._splits[(task, split)])

    def task_ids(self) -> list[str]:
        if self._ids is None:
            per_task = [self.split_variations(t)[: self.variations] for t in self.tasks]
            rounds = itertools.zip_longest(*per_task)
            self._ids = [
                f"{_PREFIX}{t}/{v}"
                for row in rounds
                for t, v in zip(self.tasks, row, strict=True)
                if v is not None
            ]
        return list(self._ids)

    def task_text(self, observation: str) -> str:
        """The task description (the first paragraph of the first observation)."""
        return observation.split("\n\n", 1)[0]

    def walkthrough(self, task_id: str) -> list[str]:
        """The package's gold actions for ``task_id`` (for tests and scripted policies, not agents).

        Generating them reloads the simulator, so a running episode ends (call ``reset()``).
        """
        if task_id not in self._id_set():
            raise UnknownName(
                f"unknown task_id {task_id!r} for env 'scienceworld'; list them with env.task_ids()"
            )
        if task_id not in self._gold:
            task, var = _parse_id(task_id)
            sim = self.simulator
            self._done = True
            with _jvm_errors():
                sim.load(task, var, self.simplifications, generateGoldPath=True)
                self._gold[task_id] = [str(a) for a in sim.get_gold_action_sequence()]
        return list(self._gold[task_id])

    # --- the episode -----------------------------------------------------------------
    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        task, var = _parse_id(task_id)
        sim = self.simulator
        with _jvm_errors():
            sim.load(task, var, self.simplifications)
            look, raw = sim.reset()
            self._description = str(sim.get_task_description())
        self._score = max(int(raw["score"]), 0)
        self._actions = []
        look, valid = self._as_before(str(look), raw)
        return f"{self._description}\n\n{look}", self._info(raw, valid, feedback="")

    def _step(self, action: str) -> StepResult:
        with _jvm_errors():
            obs, _, done, raw = self._sim.step(action)
        self._actions.append(action)
        obs, valid = self._as_before(str(obs), raw)
        before, self._score = self._score, max(int(raw["score"]), 0)
        info = self._info(raw, valid, feedback=obs)
        return obs, float(self._score - before), bool(done) or info["success"], False, info

    def _info(self, raw: dict[str, Any], valid: list[str], **extra: Any) -> dict[str, Any]:
        return {
            "admissible_actions": valid,
            "task_description": self._description,
            "score": float(self._score),
            "success": self._score >= 100,
            "failed": int(raw["score"]) < 0,
            "moves": int(raw["moves"]),
            **extra,
        }

    def _as_before(self, obs: str, raw: dict[str, Any]) -> tuple[str, list[str]]:
        """The observation and valid actions as this env gave them the last time it was in this
        state, when the simulator's observation has the same words (see the module docstring)."""
        state = (self.task_id, tuple(self._actions), _words(raw["look"]), _words(raw["inv"]))
        seen = self._seen.get(state)
        if seen is None or _words(seen[0]) != _words(obs):
            seen = (obs, list(dict.fromkeys(str(a) for a in raw["valid"])))
            self._seen[state] = seen
            if len(self._seen) > _SEEN_STATES:
                self._seen.popitem(last=False)
        self._seen.move_to_end(state)
        return seen[0], list(seen[1])


def _words(text: Any) -> tuple[str, ...]:
    """The words and punctuation of ``text`` in sorted order: equal for the same text in another order."""
    return tuple(sorted(re.findall(r"\w+|[^\w\s]", str(text))))


def _parse_id(task_id: str) -> tuple[str, int]:
    task, _, var = task_id.removeprefix(_PREFIX).rpartition("/")
    return task, int(var)
