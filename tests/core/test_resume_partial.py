"""Resume from every checkpoint a kill can leave behind, for every run type.

A kill can land after a node's writes were saved but before the next checkpoint: LangGraph's
live view then shows ``next == ()`` although the graph has not reached its end. These tests make
such states deterministically, two ways, and compare the resumed run with an uninterrupted one,
episode and memory alike:

- cut a finished run back: keep only the first ``k`` checkpoints of one episode's thread (with or
  without the saved writes of the last one) and drop its line from ``episodes.jsonl`` (for agents
  that recall nothing from memory: the memory left in place is then what the episode wrote);
- kill a run right after its saver's ``k``-th write (the process kills itself there), for every
  run type, memory modes included, then resume.
"""

import importlib.util
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ponder.config import RunConfig
from ponder.models import ScriptedPolicy
from ponder.run_check import check_run, diff_snapshots, run_snapshot
from ponder.runner import run

BENCH = Path(__file__).resolve().parents[2] / "bench" / "kill_resume.py"
_spec = importlib.util.spec_from_file_location("kill_resume", BENCH)
kill_resume = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kill_resume)


def _run(kind, runs_dir, resume=False, **kw):
    cfg = RunConfig(
        **{**kill_resume.TYPES[kind], "concurrency": 1, **kw},
        policy="scripted",
        script=("unused",),
        embedder="hashing",
        runs_dir=str(runs_dir),
        name="run",
        resume=resume,
    )
    return run(cfg, policy=ScriptedPolicy(kill_resume.reply), progress=False)


def _cut(run_dir: Path, thread: str, keep: int, drop_writes: bool) -> int:
    """Keep ``thread``'s first ``keep`` checkpoints; return how many it had."""
    with sqlite3.connect(run_dir / "checkpoints.sqlite") as db:
        ids = [
            r[0]
            for r in db.execute(
                "select checkpoint_id from checkpoints where thread_id = ? and checkpoint_ns = '' "
                "order by checkpoint_id",
                (thread,),
            )
        ]
        for cid in ids[keep:]:
            db.execute("delete from checkpoints where thread_id = ? and checkpoint_id = ?", (thread, cid))
            db.execute("delete from writes where thread_id = ? and checkpoint_id = ?", (thread, cid))
        if drop_writes and keep:  # the kill came before the last step's writes were saved
            db.execute(
                "delete from writes where thread_id = ? and checkpoint_id = ?", (thread, ids[keep - 1])
            )
    log = run_dir / "episodes.jsonl"
    lines = [x for x in log.read_text().splitlines() if json.loads(x)["episode_id"] != thread]
    log.write_text("".join(x + "\n" for x in lines))
    return len(ids)


@pytest.mark.parametrize("kind", ["reflexion", "search", "debate", "embodied"])
def test_resume_from_any_checkpoint_ends_as_uninterrupted(tmp_path, kind):
    ref = _run(kind, tmp_path / "ref", memory_modes=())
    expected = run_snapshot(ref.run_dir)
    thread = ref.episodes[-1]["episode_id"]  # the last one: memory from the others is in place
    probe = tmp_path / "probe"
    shutil.copytree(ref.run_dir.parent, probe)
    total = _cut(probe / "run", thread, 10**6, False)
    assert total >= 4
    # every cut point, both ways, on short threads; a spread of them on long ones
    points = sorted({1, 2, 3, total // 2, total - 2, total - 1, *range(1, total, max(1, total // 6))})
    for keep in points:
        for drop_writes in (False, True):
            trial = tmp_path / f"k{keep}{'w' if drop_writes else ''}"
            shutil.copytree(ref.run_dir.parent, trial)
            _cut(trial / "run", thread, keep, drop_writes)
            _run(kind, trial, resume=True, memory_modes=())
            where = f"{kind}: kept {keep} of {total} checkpoints{', writes dropped' if drop_writes else ''}"
            assert check_run(trial / "run") == [], where
            assert diff_snapshots(expected, run_snapshot(trial / "run")) == [], where
            shutil.rmtree(trial)


def test_a_finished_looking_thread_with_missing_trials_runs_again(tmp_path, caplog):
    """A checkpoint that says 'done' but holds fewer trials than the run asked for is not logged."""
    ref = _run("reflexion", tmp_path / "ref")
    thread = next(e["episode_id"] for e in ref.episodes if not e["success"])
    eps = [x for x in (ref.run_dir / "episodes.jsonl").read_text().splitlines() if thread not in x]
    (ref.run_dir / "episodes.jsonl").write_text("".join(x + "\n" for x in eps))
    # resume with one trial more: the saved thread ended after 3, which no longer finishes it
    saved = RunConfig.from_yaml(ref.run_dir / "config.yaml")
    saved.replace(trials=4).save(ref.run_dir / "config.yaml")
    cfg = RunConfig.from_yaml(ref.run_dir / "config.yaml").replace(resume=True)
    result = run(cfg, policy=ScriptedPolicy(kill_resume.reply), progress=False)
    again = next(e for e in result.episodes if e["episode_id"] == thread)
    assert again["trials_used"] == 4 and not again["resumed"]
    assert "runs again" in caplog.text


@pytest.mark.parametrize("kind", list(kill_resume.TYPES))
def test_killed_right_after_a_saved_write_resumes_as_uninterrupted(tmp_path, kind):
    """The process kills itself just after the saver's k-th write, early and late in the run (the
    resume of the first is killed too); ``bench/kill_resume.py`` kills at many more points."""
    drive = [sys.executable, str(BENCH), "--drive", kind]
    count = tmp_path / "writes"
    subprocess.run([*drive, "--runs-dir", str(tmp_path / "ref"), "--count-file", str(count)], check=True)
    expected, writes = run_snapshot(tmp_path / "ref" / "run"), int(count.read_text())
    for i, k in enumerate((writes // 3, writes - 3)):
        runs_dir = str(tmp_path / f"k{k}")
        died = subprocess.run([*drive, "--runs-dir", runs_dir, "--die-after", str(k)])
        assert died.returncode == -9
        if i == 0:  # and the resume, early on
            again = subprocess.run([*drive, "--runs-dir", runs_dir, "--resume", "--die-after", "3"])
            assert again.returncode == -9
        subprocess.run([*drive, "--runs-dir", runs_dir, "--resume"], check=True)
        run_dir = Path(runs_dir) / "run"
        assert check_run(run_dir) == [], f"{kind}: killed after write {k} of {writes}"
        assert diff_snapshots(expected, run_snapshot(run_dir)) == [], f"{kind}: killed after write {k}"
