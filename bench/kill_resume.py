"""Kill runs with SIGKILL at random points, resume them (killing some resumes too), and check
that each ends exactly as a run that was never interrupted.

For every run type (reflexion with all memory modes, PRM search, debate, a team, an embodied
agent with CLIN lessons) it makes one uninterrupted reference run, then for each kill: starts the
run in a subprocess, kills it, resumes it (and, with probability ``--resume-kills``, kills that
resume too), and resumes to the end. Kills come two ways, taken in turn:

- at a random time (SIGKILL to the process group), mostly while episodes run;
- right after a random one of the run's checkpoint writes (the process SIGKILLs itself once
  LangGraph's saver has stored the k-th batch of a node's writes or the k-th checkpoint): the
  moments between a node's saved writes and the next checkpoint, which a timer rarely hits.

Then it checks:

- every logged episode finished (a trial at least; all trials unless one succeeded), none twice;
- no episode lost: the episodes are those of the reference run, field for field (wall times and
  ``resumed`` aside);
- memory equal to the reference run's, record for record (creation times aside).

The policy is a ``ScriptedPolicy`` whose reply depends only on the prompt (and sleeps a little
per call, so kills land all over the run), and memory uses the hashing embedder: both runs then
see the same text, and any difference comes from the kill and the resume.

    .venv/bin/python bench/kill_resume.py                    # 5 kills per run type (25 in all)
    .venv/bin/python bench/kill_resume.py --kills 2 --types reflexion,embodied --seed 3

Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

#: run types: RunConfig settings (the runner's defaults fill the rest)
TYPES: dict[str, dict[str, Any]] = {
    "reflexion": dict(
        agent="reflexion",
        env="math",
        tasks=6,
        trials=3,
        memory_modes=("experiential", "reflective", "concept"),
        concurrency=1,  # recall depends on what earlier episodes stored: keep their order fixed
    ),
    "search": dict(agent="search", env="math", tasks=6, trials=2, algorithm="beam", prm="verifier", n=4),
    "debate": dict(agent="debate", env="math", tasks=6, agents=3, rounds=2, concurrency=2),
    "team": dict(agent="team", env="math", tasks=5, trials=2, topology="star", agents=2, concurrency=1),
    "embodied": dict(
        agent="embodied",
        env="toy-rooms",
        tasks=3,
        trials=2,
        env_steps=5,
        memory_modes=("reflective", "concept"),
        concurrency=1,
    ),
}
_ACTIONS = ("look", "take key", "open chest", "open door", "go to kitchen", "eat apple", "take lamp")


def reply(prompt: Any) -> str:
    """A reply that depends only on the prompt's text: insight operations when asked for them,
    else a thought, an action and an answer (each agent reads the part it needs)."""
    text = "\n".join(m.content for m in prompt.messages) + prompt.assistant_prefix
    h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    time.sleep(0.02)  # spread the run over time, so random kills land in every node
    if "memory of a task" in prompt.messages[0].content:  # CLIN's rewrite (ponder.memory.clin)
        return (
            f"1. Taking the key may be necessary to opening the chest (v{h % 3}).\n"
            "2. Looking does not contribute to it."
        )
    if "operation lines" in prompt.messages[0].content:
        if "cause-and-effect" in prompt.messages[0].content:
            return "ADD: taking the key may be necessary for opening the chest\nUPVOTE 1"
        return "ADD: Check each step of the sum before giving the answer.\nUPVOTE 1\nDOWNVOTE 2"
    return f"Think: step {h % 7}.\nAction: {_ACTIONS[h % len(_ACTIONS)]}\nAnswer: {h % 12}"


def _die_after(k: int, count_file: str | None) -> None:
    """SIGKILL this process right after the saver's k-th write (0: never); count writes to a file."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    lock, seen = threading.Lock(), [0]

    def counted(original: Any) -> Any:
        def write(self: Any, *args: Any, **kw: Any) -> Any:
            out = original(self, *args, **kw)
            with lock:
                seen[0] += 1
                if count_file:
                    Path(count_file).write_text(str(seen[0]))
                if seen[0] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
            return out

        return write

    SqliteSaver.put = counted(SqliteSaver.put)
    SqliteSaver.put_writes = counted(SqliteSaver.put_writes)


def drive(kind: str, runs_dir: str, resume: bool, die_after: int = 0, count_file: str | None = None) -> None:
    """One run of ``kind`` in this process (what the harness starts and kills)."""
    from ponder.config import RunConfig
    from ponder.models import ScriptedPolicy
    from ponder.runner import run

    if die_after or count_file:
        _die_after(die_after, count_file)
    cfg = RunConfig(
        **TYPES[kind],
        policy="scripted",
        script=("see bench/kill_resume.py",),
        embedder="hashing",
        runs_dir=runs_dir,
        name="run",
        resume=resume,
    )
    run(cfg, policy=ScriptedPolicy(reply), progress=False)


def _start(kind: str, runs_dir: Path, resume: bool, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--drive", kind, "--runs-dir", str(runs_dir), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [*cmd, *(["--resume"] if resume else [])],
        start_new_session=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _finish(p: subprocess.Popen, what: str) -> None:
    _, err = p.communicate(timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"{what} failed (exit {p.returncode}):\n{err.decode()[-3000:]}")


def _died(p: subprocess.Popen) -> bool:
    """Wait for a run told to kill itself; whether it did (it may finish first, on a resume)."""
    p.communicate(timeout=600)
    return p.returncode == -signal.SIGKILL


def _kill_at(p: subprocess.Popen, at: float) -> bool:
    """SIGKILL ``p``'s process group ``at`` seconds after it started; whether it was still running."""
    end = time.monotonic() + at
    while time.monotonic() < end and p.poll() is None:
        time.sleep(0.005)
    alive = p.poll() is None
    if alive:
        os.killpg(p.pid, signal.SIGKILL)
    p.communicate()
    return alive


def _wait_for(path: Path, p: subprocess.Popen) -> float:
    """When ``path`` appeared (the run's start-up is over), or when ``p`` ended."""
    while not path.exists() and p.poll() is None:
        time.sleep(0.005)
    return time.monotonic()


def _logged(run_dir: Path) -> int:
    path = run_dir / "episodes.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def harness(
    types: list[str], kills: int, resume_kills: float, seed: int, out: Path
) -> tuple[list[dict[str, Any]], bool]:
    from ponder.run_check import check_run, diff_snapshots, run_snapshot

    rng = random.Random(seed)
    rows, ok = [], True
    for kind in types:
        ref_dir = out / kind / "reference"
        count = out / kind / "writes"
        t0 = time.monotonic()
        p = _start(kind, ref_dir, False, "--count-file", str(count))
        startup = _wait_for(ref_dir / "run" / "checkpoints.sqlite", p) - t0
        _finish(p, f"{kind} reference run")
        span, writes = time.monotonic() - t0, int(count.read_text())
        ref = run_snapshot(ref_dir / "run")
        row = {"type": kind, "seconds": span, "startup": startup, "writes": writes, "problems": []}
        row |= {"timer": 0, "at_write": 0, "resume_kills": 0, "missed": 0, "episodes": 0, "logged": []}

        for i in range(kills):
            runs_dir = out / kind / f"kill{i}"
            mode = "write" if i % 2 else "timer"
            killed = _kill_one(kind, runs_dir, False, mode, row, rng)
            row[("at_write" if mode == "write" else "timer") if killed else "missed"] += 1
            row["logged"].append(_logged(runs_dir / "run"))
            if rng.random() < resume_kills:
                killed = _kill_one(kind, runs_dir, True, rng.choice(["write", "timer"]), row, rng)
                row["resume_kills" if killed else "missed"] += 1
            _finish(_start(kind, runs_dir, True), f"{kind} resume {i}")
            run_dir = runs_dir / "run"
            found = check_run(run_dir) + diff_snapshots(ref, run_snapshot(run_dir))
            row["episodes"] += _logged(run_dir)
            row["problems"] += [f"kill{i} ({mode}): {p}" for p in found]
            ok &= not found
        rows.append(row)
        print(_line(row), flush=True)
    return rows, ok


def _kill_one(kind: str, runs_dir: Path, resume: bool, mode: str, ref: dict[str, Any], rng: Any) -> bool:
    """Start a run (or its resume) and kill it, by ``mode``; whether the kill landed before its end.

    ``ref`` holds the reference run's ``seconds``, ``startup`` and saver ``writes``.
    """
    if mode == "write":  # a resume writes fewer: aim inside its share
        k = rng.randint(1, max(1, ref["writes"] // (3 if resume else 1)))
        return _died(_start(kind, runs_dir, resume, "--die-after", str(k)))
    # mostly while episodes run; sometimes during start-up or right at the end
    startup, span = ref["startup"], ref["seconds"]
    at = startup + rng.uniform(-0.1, 0.6 if resume else 0.9) * (span - startup)
    return _kill_at(_start(kind, runs_dir, resume), at)


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['type']:<10} {r['seconds']:4.1f} s, {r['writes']:3d} saver writes | kills: {r['timer']} by timer, "
        f"{r['at_write']} after a write, {r['resume_kills']} of resumes ({r['missed']} ran to the end first) | "
        f"episodes logged at the kill {r['logged']} | episodes checked {r['episodes']:3d} | "
        f"problems {len(r['problems'])}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=",".join(TYPES), help="run types, comma-separated")
    ap.add_argument("--kills", type=int, default=5, help="killed runs per type")
    ap.add_argument("--resume-kills", type=float, default=0.6, help="chance that the resume is killed too")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="keep the run directories here (default: a temp dir, removed)")
    ap.add_argument("--drive", help=argparse.SUPPRESS)
    ap.add_argument("--runs-dir", help=argparse.SUPPRESS)
    ap.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--die-after", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--count-file", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.drive:
        drive(a.drive, a.runs_dir, a.resume, a.die_after, a.count_file)
        return 0
    types = [t.strip() for t in a.types.split(",") if t.strip()]
    unknown = [t for t in types if t not in TYPES]
    if unknown:
        ap.error(f"unknown run types {unknown}; choose from {', '.join(TYPES)}")
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="ponder-kill-"))
    try:
        rows, ok = harness(types, a.kills, a.resume_kills, a.seed, out)
    finally:
        if not a.out:
            shutil.rmtree(out, ignore_errors=True)
    total = sum(r["timer"] + r["at_write"] + r["resume_kills"] for r in rows)
    print(
        f"\n{total} kills ({sum(r['resume_kills'] for r in rows)} of them during a resume), "
        f"{sum(r['episodes'] for r in rows)} episodes checked: {'all as uninterrupted' if ok else 'PROBLEMS'}"
    )
    for r in rows:
        for p in r["problems"]:
            print(f"  {r['type']}: {p}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
