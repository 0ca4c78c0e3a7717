"""Where dataset builders read episodes from: run directories and memory stores.

A ``Source`` is the episodes of one run directory (``read_run``) or of one memory store
(``data_memory.read_memory``: its ``Experience`` records as episode-shaped dicts), with what a
builder needs to rebuild the prompts the agents saw: the run's env (rebuilt from its
``config.yaml`` with ``ponder.runner.make_env_for``) for its worked examples and, for embodied
runs, for replaying trials; and the provenance every example carries.

A builder (``data_rft``, ``data_correction``, ``data_embodied``) is a generator over one episode
that yields ``Candidate``s; it raises ``Skip`` (with the reason counted in the report) when the
episode gives nothing.

Example:
    >>> import tempfile, pathlib
    >>> from ponder.config import RunConfig
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "r"
    >>> d.mkdir(); RunConfig(agent="retry", env="math", tasks=1).save(d / "config.yaml")
    >>> _ = (d / "episodes.jsonl").write_text('{"episode_id": "math/L1/0#seed0", "task_id": "math/L1/0"}\\n')
    >>> src = read_run(d)
    >>> src.name == str(d), len(src.episodes), src.cfg.agent
    (True, 1, 'retry')
    >>> trial_ok({"success": False, "hidden_success": True}, "visible")
    False
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ponder.agents import EMBODIED
from ponder.config import RunConfig
from ponder.episodes import read_episodes
from ponder.errors import ConfigError, PonderError
from ponder.models.types import Prompt
from ponder.training.examples import ChatExample

__all__ = [
    "GRADES",
    "Candidate",
    "Options",
    "Skip",
    "Source",
    "is_embodied",
    "normalise",
    "observation",
    "prompt_messages",
    "read_run",
    "task_key",
    "trial_ok",
]

log = logging.getLogger(__name__)

#: how a trial's success is read: ``visible`` (what the env told the agent: the honest default)
#: or ``final`` (the hidden grade where the env has one: HumanEval's hidden tests)
GRADES = ("visible", "final")


class Skip(Exception):
    """An episode gives no example of a kind; ``reason`` is counted in the report."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Candidate:
    """One unit of selection: the examples of one answer (an embodied trial: one per step).

    Attributes:
        examples: the chat examples.
        task: the task they belong to (``task_key``): de-duplication and the cap are per task.
        key: what counts as the same answer within the task (whitespace-normalised text).
    """

    examples: list[ChatExample]
    task: str
    key: str


@dataclass(frozen=True)
class Options:
    """What the builders are told (``build_dataset`` validates it).

    Attributes:
        grade: ``visible`` or ``final`` (``GRADES``).
        variants: self-correction prompts to make: ``feedback`` (retry-feedback's), ``reflection``
            (Reflexion's, when the episode has reflections).
    """

    grade: str = "visible"
    variants: tuple[str, ...] = ("feedback", "reflection")


def normalise(text: str) -> str:
    """Whitespace collapsed: what counts as the same answer."""
    return " ".join(str(text).split())


def observation(episode: dict[str, Any]) -> str:
    """The task as the actor saw it; ``Skip`` when the record has none."""
    obs = str(episode.get("observation") or "")
    if not obs.strip():
        raise Skip("episode has no observation (task text)")
    return obs


def trial_ok(trial: dict[str, Any], grade: str) -> bool:
    """Whether ``trial`` succeeded under ``grade`` (see ``GRADES``)."""
    if grade == "final":
        return bool(trial.get("hidden_success", trial.get("success")))
    return bool(trial.get("success"))


def is_embodied(episode: dict[str, Any]) -> bool:
    """An episode of an embodied agent (its trials are step lists in a multi-step env)."""
    return episode.get("agent") in EMBODIED or any("steps" in t for t in episode.get("trials", []))


def task_key(episode: dict[str, Any]) -> str:
    """The task as the agent saw it: env, task id and a digest of the first observation."""
    digest = hashlib.blake2b(str(episode.get("observation", "")).strip().encode(), digest_size=6).hexdigest()
    return f"{episode.get('env', '')}|{episode.get('task_id', '')}|{digest}"


def prompt_messages(prompt: Prompt) -> list[dict[str, Any]]:
    """``prompt``'s messages as dicts; its assistant turns (worked examples, acknowledgements)
    are context, marked ``"train": False``."""
    out: list[dict[str, Any]] = []
    for m in prompt.messages:
        d: dict[str, Any] = m.to_dict()
        if m.role == "assistant":
            d["train"] = False
        out.append(d)
    return out


@dataclass
class Source:
    """Episodes of one run directory or memory store, and the envs that rebuild their prompts.

    Attributes:
        name: the run directory or the memory store, as given (a path).
        origin: ``"run"`` or ``"memory"``.
        episodes: episode records (``episodes.jsonl`` lines, or episode-shaped memory records).
        cfg: the run's config (None for memory: envs are then built with their defaults).
        path: the directory read.
    """

    name: str
    origin: str
    episodes: list[dict[str, Any]]
    cfg: RunConfig | None = None
    path: Path | None = None
    _envs: dict[str, Any] = field(default_factory=dict, repr=False)
    #: what builders keep per source (the embodied grounder)
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def env(self, name: str) -> Any:
        """The env of an episode: the run's own (its config), or ``make(name)`` for memory."""
        if name not in self._envs:
            from ponder.environments import make
            from ponder.runner import make_env_for

            try:
                self._envs[name] = make_env_for(self.cfg) if self.cfg is not None else make(name)
            except PonderError as e:
                if self.cfg is not None:
                    raise ConfigError(f"cannot rebuild the env of run {self.path}: {e}") from e
                raise Skip(f"env {name!r} cannot be built ({str(e)[:80]})") from e
        return self._envs[name]

    def exemplars(self, episode: dict[str, Any]) -> tuple[list[tuple[str, str]], str]:
        """The env's worked examples for the episode's task, as the agents show them, and where
        they came from: ``"run config"`` (the run's env), ``"env defaults"`` (a memory record: the
        env built with its defaults) or ``"env few-shot"`` (a memory record whose task the default
        env does not know: its generic few-shot set)."""
        env = self.env(episode.get("env", ""))
        try:
            pairs = env.examples_for(episode["task_id"])
            how = "run config" if self.cfg is not None else "env defaults"
        except (KeyError, IndexError, PonderError):
            if self.cfg is not None:
                raise Skip("task not in the run's env (was its config.yaml edited?)") from None
            pairs, how = env.fewshot, "env few-shot"
        return [(str(q), str(a)) for q, a in pairs], how

    def outcomes(self, episode: dict[str, Any], grade: str) -> list[bool]:
        """Each trial's success under ``grade``; ``Skip`` where it cannot be read (a memory
        record keeps no hidden grade)."""
        trials = episode.get("trials") or []
        if not trials:
            raise Skip("episode has no trials")
        if grade == "final" and self.origin == "memory":
            from ponder.environments.base import TextEnv

            if type(self.env(episode.get("env", ""))).hidden_grade is not TextEnv.hidden_grade:
                raise Skip("memory keeps no hidden grade (grade='final'): pass the run directory")
        return [trial_ok(t, grade) for t in trials]

    def provenance(self, episode: dict[str, Any], trials: list[int | None], **extra: Any) -> dict[str, Any]:
        """Where an example came from: run, episode, task, trials, agent, env, model."""
        src: dict[str, Any] = {
            "run": episode.get("run") or self.name,
            "episode_id": episode.get("episode_id"),
            "task_id": episode.get("task_id"),
            "trials": trials,
            "agent": episode.get("agent"),
            "env": episode.get("env"),
            "model": episode.get("model"),
            "origin": self.origin,
        }
        src["run_dir" if self.origin == "run" else "memory"] = self.name
        if episode.get("memory_id"):
            src["record_id"] = episode["memory_id"]
        if episode.get("feedback"):
            src["feedback"] = episode["feedback"]
        if episode.get("oracle"):
            src["oracle"] = True
        if self.cfg is not None and self.cfg.memory_modes:
            # what memory recalled into the prompt is not in the episode record: left out
            src["recalled_memory_omitted"] = True
        return {**src, **extra}

    def close(self) -> None:
        for env in self._envs.values():
            try:
                env.close()
            except Exception as e:  # closing must not lose a built dataset
                log.warning("could not close env %s: %s", getattr(env, "name", env), e)
        self._envs.clear()


def read_run(path: str | os.PathLike[str]) -> Source:
    """The episodes and config of a run directory; a one-line ``ConfigError`` if it is not one."""
    d = Path(path)
    if not d.is_dir():
        raise ConfigError(f"no run directory {d}; pass directories written by `ponder run` (runs/NAME)")
    if not (d / "config.yaml").is_file():
        raise ConfigError(
            f"{d} is not a run directory (no config.yaml); pass directories written by `ponder run` (runs/NAME)"
        )
    try:
        cfg = RunConfig.from_yaml(d / "config.yaml")
    except (ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"cannot read the config of run {d}: {e}") from None
    episodes = read_episodes(d / "episodes.jsonl")
    if not episodes:
        raise ConfigError(
            f"run {d} has no episodes (episodes.jsonl missing or empty); finish it with "
            f"`ponder run --runs-dir {d.parent} --name {d.name} --resume`, or leave it out"
        )
    return Source(str(d), "run", episodes, cfg, d)
