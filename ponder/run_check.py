"""Check what a run directory holds: every logged episode finished, none twice, memory as expected.

``check_run(run_dir)`` lists what is wrong with a run's ``episodes.jsonl`` (an episode logged
twice, a line that is not JSON, an episode that did not finish its trials); ``run_snapshot``
and ``diff_snapshots`` compare two runs of the same config record by record, leaving out what
differs between any two runs (``VOLATILE_KEYS``: wall times, ``resumed``, creation times). The kill-and-resume
harness (``bench/kill_resume.py``) uses them to check that a run killed at random points and
resumed ends exactly as one that was never interrupted.

Example:
    >>> import tempfile
    >>> from ponder.config import RunConfig
    >>> from ponder.runner import run
    >>> cfg = RunConfig(agent="retry", env="math", tasks=2, trials=2, policy="scripted",
    ...                 script=("Answer: 3",), runs_dir=tempfile.mkdtemp(), embedder="hashing")
    >>> result = run(cfg, progress=False)
    >>> check_run(result.run_dir)
    []
    >>> diff_snapshots(run_snapshot(result.run_dir), run_snapshot(result.run_dir))
    []
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ponder.agents import trials_for
from ponder.config import RunConfig
from ponder.episodes import scan_episodes, trials_problem

__all__ = ["check_run", "diff_snapshots", "memory_records", "run_snapshot"]

#: fields, at any depth, that differ between any two runs of the same config: wall times,
#: whether an episode was resumed, creation and event times of memory records
VOLATILE_KEYS = frozenset({"seconds", "resumed", "created_at", "at"})


def check_run(run_dir: str | Path, *, max_trials: int | None = None) -> list[str]:
    """What is wrong with ``run_dir``'s episode log: torn lines, episodes logged twice, episodes
    that did not finish (no trial, or fewer than ``max_trials`` without a success; ``max_trials``
    defaults to the saved config's, 1 for debates). An empty list means none of these."""
    run_dir = Path(run_dir)
    episodes, bad = scan_episodes(run_dir / "episodes.jsonl")
    problems = [f"episodes.jsonl:{n} is {why}" for n, _, why in bad]
    if max_trials is None:
        cfg = RunConfig.from_yaml(run_dir / "config.yaml")
        max_trials = trials_for(cfg.agent, cfg.trials)
    for e in episodes:
        eid = e["episode_id"]
        trials = e.get("trials") or []
        if e.get("trials_used") != len(trials):
            problems.append(f"episode {eid} says trials_used {e.get('trials_used')} but holds {len(trials)}")
        if why := trials_problem(trials, bool(e.get("success")), max_trials):
            problems.append(f"episode {eid} {why}")
    return problems


def _stable(value: Any) -> Any:
    """``value`` without the ``VOLATILE_KEYS``, at any depth."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def memory_records(store: Any) -> dict[str, Any]:
    """Every record of an open ``MemoryStore`` by ``kind/id``, without the ``VOLATILE_KEYS``: what two
    runs that wrote the same memory have equal."""
    return {f"{r.kind}/{r.id}": _stable(r.to_dict()) for r in store.list()}


def run_snapshot(run_dir: str | Path, *, memory: str | Path | None = None) -> dict[str, Any]:
    """The run's episodes by id and its memory records by (kind, id), without volatile fields.

    Args:
        run_dir: the run directory.
        memory: the memory directory, when not ``run_dir/memory``.
    """
    from ponder.memory import MemoryStore

    run_dir = Path(run_dir)
    episodes, _ = scan_episodes(run_dir / "episodes.jsonl")
    by_id = {e["episode_id"]: _stable(e) for e in episodes}
    records: dict[str, Any] = {}
    mem_dir = Path(memory) if memory else run_dir / "memory"
    if mem_dir.exists():
        with MemoryStore.open(mem_dir, mode="r") as store:
            records = memory_records(store)
    return {"episodes": by_id, "memory": records}


def diff_snapshots(expected: dict[str, Any], got: dict[str, Any], *, limit: int = 20) -> list[str]:
    """Differences between two ``run_snapshot``s, as readable lines (at most ``limit``)."""
    out: list[str] = []
    for part in ("episodes", "memory"):
        a, b = expected[part], got[part]
        for key in sorted(set(a) - set(b)):
            out.append(f"{part}: {key} missing")
        for key in sorted(set(b) - set(a)):
            out.append(f"{part}: {key} unexpected")
        for key in sorted(set(a) & set(b)):
            if a[key] != b[key]:
                fields = sorted(k for k in set(a[key]) | set(b[key]) if a[key].get(k) != b[key].get(k))
                out.append(f"{part}: {key} differs in {', '.join(fields)}")
    return out[:limit]
