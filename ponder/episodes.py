"""``episodes.jsonl``: one JSON line per finished episode, atomic and idempotent by id.

Each line is written with a single ``write`` on an ``O_APPEND`` descriptor and fsynced,
so a killed run leaves whole lines only; a torn last line (power loss) is set aside on
open instead of being parsed. Writing an id that is already there is a no-op, which is
what makes ``--resume`` lose and duplicate nothing.

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

__all__ = ["EpisodeLog", "trials_problem"]

log = logging.getLogger(__name__)


def trials_problem(trials: list[Any], success: bool, max_trials: int) -> str | None:
    """Why an episode's trials do not make a finished episode, or None: a finished episode has at
    least one trial, and all ``max_trials`` of them unless one succeeded.

    Example:
        >>> trials_problem([], False, 2)
        'ended with no trial recorded'
        >>> trials_problem([{"trial": 0}], False, 2)
        'ended after 1 of 2 trials without a success'
        >>> trials_problem([{"trial": 0}], True, 2) is None
        True
    """
    if not trials:
        return "ended with no trial recorded"
    if not success and len(trials) < max_trials:
        return f"ended after {len(trials)} of {max_trials} trials without a success"
    return None


class EpisodeLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._salvage_torn_tail()
        self._ids = {e["episode_id"] for e in self.read()}

    def read(self) -> list[dict[str, Any]]:
        """Every whole episode line, in the order written."""
        if not self.path.exists():
            return []
        out = []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    log.warning("%s:%d is not valid JSON; skipped", self.path, n)
        return out

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

    def _salvage_torn_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        torn = self.path.with_suffix(".torn")
        torn.write_bytes(data[cut:])
        with open(self.path, "r+b") as f:
            f.truncate(cut)
        log.warning("%s ended in a torn line; moved it to %s", self.path, torn)
