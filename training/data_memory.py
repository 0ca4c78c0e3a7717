"""Episodes from a memory store: its ``Experience`` records, for when the run directories are gone.

The runner stores one ``Experience`` per episode (``ponder.runner.experience_from_episode``):
the task as the agent saw it (``record.task``) and one trajectory step per trial with its
``action``, ``feedback``, ``success`` (what the agent was told: for HumanEval the visible
tests) and ``reflection``. ``read_memory`` turns them back into episode-shaped dicts that the
builders read like a run's episodes. Embodied experiences keep only the joined actions, not the
steps, so they give no embodied examples.

Example:
    >>> import tempfile
    >>> from ponder.memory import Experience, MemoryStore, Provenance
    >>> with MemoryStore.open(tempfile.mkdtemp(), embedder="hashing") as store:
    ...     prov = Provenance(run_id="r", episode_id="e", env="math", task_id="math/L1/0",
    ...                       agent="retry", source="env", trusted=True)
    ...     _ = store.add(Experience("What is 9 + 4?", [{"action": "Answer: 13", "success": True}],
    ...                              "success", provenance=prov))
    ...     src, skipped = read_memory(store)
    >>> [(e["episode_id"], e["trials"][0]["success"]) for e in src.episodes], skipped
    ([('e', True)], {})
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

from ponder.training.data_source import Source

__all__ = ["read_memory"]


def read_memory(
    store: Any, *, skip_runs: Collection[tuple[str | None, str | None]] = ()
) -> tuple[Source, dict[str, int]]:
    """The ``Experience`` records of a memory store (a ``MemoryStore`` or its directory, opened
    read-only) as episode-shaped dicts, oldest first, and the records left out, by reason.

    Only records the environment wrote and vouched for (``is_trusted``: what the runner stores
    for every episode) are read: an imported or agent-written record may just claim a success.
    Records of an episode in ``skip_runs`` (``(run, episode_id)`` pairs, read from its run
    directory already) are left out.
    """
    from ponder.memory.retrieval import is_trusted

    opened = None
    if isinstance(store, (str, os.PathLike)):
        from ponder.memory import MemoryStore

        opened = store = MemoryStore.open(store, mode="r")
    try:
        records = sorted(store.list(kind="experience"), key=lambda r: (r.provenance.created_at, r.id))
        where = str(store.path or store.url)
    finally:
        if opened is not None:
            opened.close()
    episodes, skipped = [], {}
    for r in records:
        p = r.provenance
        why = (
            "untrusted memory record (not written by a run's env)"
            if not is_trusted(r)
            else "episode already read from its run directory"
            if (p.run_id, p.episode_id) in skip_runs
            else None
        )
        if why:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        trials = [
            {
                "trial": i,
                "action": str(s.get("action", "")),
                "feedback": str(s.get("feedback", "")),
                "success": bool(s.get("success")),
                "reflection": s.get("reflection"),
            }
            for i, s in enumerate(r.trajectory)
        ]
        episodes.append(
            {
                "run": p.run_id,
                "episode_id": p.episode_id or r.id,
                "agent": p.agent,
                "env": p.env,
                "task_id": p.task_id,
                "model": p.model,
                "observation": r.task,
                "task_text": r.key,
                "trials": trials,
                "memory_id": r.id,
            }
        )
    return Source(where, "memory", episodes), skipped
