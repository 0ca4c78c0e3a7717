"""``episodes.jsonl``: one JSON line per finished episode, atomic and idempotent by id.

Each line is written with a single ``write`` on an ``O_APPEND`` descriptor and fsynced,
so a killed run leaves whole lines only. A line that is not a whole episode anyway (a torn
last line after a power loss, a line cut or edited by hand anywhere in the file) and a second
line of an id are moved to ``episodes.torn`` when the log is opened for writing, so the file
holds each episode once and a resume re-runs what was torn; readers (``read_episodes``)
skip such lines. Writing an id that is already there is a no-op, which is what makes
``--resume`` lose and duplicate nothing.

Example:
    >>> import tempfile, pathlib
    >>> log = EpisodeLog(pathlib.Path(tempfile.mkdtemp()) / "episodes.jsonl")
    >>> log.append({"episode_id": "a", "success": True})
    True
    >>> log.append({"episode_id": "a", "success": False})
    False
    >>> [e["success"] for e in log.read()]
    [True]
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["EpisodeLog", "read_episodes", "scan_episodes", "trials_problem"]

log = logging.getLogger(__name__)


def trials_problem(trials: list[Any], success: bool, max_trials: int) -> str | None:
    """Why an episode's trials do not make a finished episode, or None: a finished episode has at
    least one trial, and all ``max_trials`` of them unless one succeeded or the agent stopped by
    its own rule (its last trial says ``stopped``: Self-Refine's critique said the answer is done,
    whatever the env's grade).

    Example:
        >>> trials_problem([], False, 2)
        'ended with no trial recorded'
        >>> trials_problem([{"trial": 0}], False, 2)
        'ended after 1 of 2 trials without a success'
        >>> trials_problem([{"trial": 0}], True, 2) is None
        True
        >>> trials_problem([{"trial": 0, "stopped": True}], False, 2) is None
        True
    """
    if not trials:
        return "ended with no trial recorded"
    stopped = isinstance(trials[-1], dict) and bool(trials[-1].get("stopped"))
    if not success and len(trials) < max_trials and not stopped:
        return f"ended after {len(trials)} of {max_trials} trials without a success"
    return None


def scan_episodes(path: Path) -> tuple[list[dict[str, Any]], list[tuple[int, str, str]]]:
    """The whole episodes of ``path`` (the first line of each id) and the other lines, with why."""
    good: list[dict[str, Any]] = []
    bad: list[tuple[int, str, str]] = []
    seen: set[str] = set()
    if not path.exists():
        return good, bad
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            episode = json.loads(line)
        except json.JSONDecodeError:
            bad.append((n, line, "not a whole JSON line"))
            continue
        eid = episode.get("episode_id") if isinstance(episode, dict) else None
        if not isinstance(eid, str):
            bad.append((n, line, "not an episode (no episode_id)"))
        elif eid in seen:
            bad.append((n, line, f"a second line of episode {eid}"))
        else:
            seen.add(eid)
            good.append(episode)
    return good, bad


def read_episodes(path: str | Path) -> list[dict[str, Any]]:
    """The episodes of an ``episodes.jsonl``, once each, in the order written; lines that are not
    whole episodes are skipped with a warning (nothing is written: safe on a read-only run).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "episodes.jsonl"
        >>> _ = p.write_text('{"episode_id": "a"}\\n{"episode_id": "b", "tr\\n{"episode_id": "a"}\\n')
        >>> [e["episode_id"] for e in read_episodes(p)]
        ['a']
    """
    path = Path(path)
    good, bad = scan_episodes(path)
    for n, _, why in bad:
        log.warning("%s:%d is %s; skipped", path, n, why)
    return good


class EpisodeLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._set_aside_bad_lines()
        self._ids = {e["episode_id"] for e in self.read()}

    def read(self) -> list[dict[str, Any]]:
        """Every whole episode line, in the order written."""
        return read_episodes(self.path)

    def __contains__(self, episode_id: str) -> bool:
        return episode_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def append(self, episode: dict[str, Any]) -> bool:
        """Write ``episode`` unless its ``episode_id`` is already there; return whether it was written."""
        line = (json.dumps(episode, ensure_ascii=False, default=str) + "\n").encode()
        with self._lock:
            if episode["episode_id"] in self._ids:
                return False
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._ids.add(episode["episode_id"])
            return True

    def _set_aside_bad_lines(self) -> None:
        """Move lines that are not whole episodes (and second lines of an id) to ``.torn``; the log
        is rewritten through a temporary file, so a kill here leaves the old file or the new."""
        good, bad = scan_episodes(self.path)
        data = self.path.read_bytes() if self.path.exists() else b""
        if not bad and (not data or data.endswith(b"\n")):
            return
        torn = self.path.with_suffix(".torn")
        with open(torn, "a", encoding="utf-8") as f:
            for n, line, why in bad:
                f.write(f"# line {n}: {why}\n{line}\n")
        tmp = self.path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(e, ensure_ascii=False, default=str) + "\n" for e in good)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        for n, _, why in bad:
            log.warning("%s:%d was %s; moved to %s", self.path, n, why, torn)
