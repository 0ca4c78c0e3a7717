"""Where a run lives: moved and copied runs resume in place; read-only places and full disks get
one line and exit 2, and nothing already written is lost."""

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from ponder.cli import main
from ponder.memory import MemoryStore
from ponder.run_check import check_run

RUN = ["run", "--agent", "reflexion", "--tasks", "4", "--trials", "2", "--policy", "scripted"]
RUN += ["--script", "Answer: 0", "--embedder", "hashing", "--no-progress"]


def _ids(run_dir):
    return [json.loads(x)["episode_id"] for x in (run_dir / "episodes.jsonl").read_text().splitlines()]


def _unlog_last(run_dir, n):
    """Drop the last ``n`` episodes from the log, as if the run was killed before logging them."""
    log = run_dir / "episodes.jsonl"
    lines = log.read_text().splitlines(True)
    log.write_text("".join(lines[:-n]))


def _memory(run_dir):
    with MemoryStore.open(run_dir / "memory", mode="r") as store:
        return sorted((r.kind, r.id, r.provenance.run_id) for r in store.list())


@pytest.mark.parametrize("how", ["mv", "cp"])
def test_a_moved_or_copied_run_resumes_in_place(tmp_path, how):
    runs = tmp_path / "runs"
    assert main([*RUN, "--runs-dir", str(runs), "--name", "a"]) == 0
    before = _memory(runs / "a")
    (shutil.move if how == "mv" else shutil.copytree)(runs / "a", runs / "b")
    _unlog_last(runs / "b", 2)
    original = {p: p.read_bytes() for p in (runs / "a").rglob("*") if p.is_file()} if how == "cp" else {}

    assert main(["run", "--name", "b", "--resume", "--runs-dir", str(runs), "--no-progress"]) == 0
    assert sorted(_ids(runs / "b")) == sorted(set(_ids(runs / "b"))) and len(_ids(runs / "b")) == 4
    assert check_run(runs / "b") == []
    # the same records, not new ones under a new name: ids and run ids are the run's own
    assert _memory(runs / "b") == before
    assert (runs / "b" / "report.md").exists()
    if how == "mv":
        assert not (runs / "a").exists()  # nothing re-created under the saved name
    else:  # the original is untouched
        assert {p: p.read_bytes() for p in (runs / "a").rglob("*") if p.is_file()} == original


# --- read-only places and full disks: real ones, in a private mount namespace ---------------------
def _can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


needs_mounts = pytest.mark.skipif(not _can_mount(), reason="needs root and unshare for a private mount")
PONDER = f"{shlex.quote(sys.executable)} -m ponder.cli"


def _in_namespace(script: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _one_line_error(err: str, *words: str) -> None:
    lines = [x for x in err.strip().splitlines() if not x.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err and all(w in lines[0] for w in words), err


@needs_mounts
def test_read_only_runs_get_one_line_and_memory_reads_still_work(tmp_path):
    runs = tmp_path / "runs"
    assert main([*RUN, "--runs-dir", str(runs), "--name", "a"]) == 0
    ro = f"mount --bind {runs} {runs} && mount -o remount,ro,bind {runs}"
    flags = " ".join(shlex.quote(x) for x in RUN[1:])
    cases = {
        "resume": f"{PONDER} run --name a --resume --runs-dir {runs} --no-progress",
        "new run": f"{PONDER} run {flags} --runs-dir {runs} --name b",
        "report": f"{PONDER} report {runs / 'a'}",
        "ls": f"{PONDER} memory ls --memory {runs / 'a'} --json",
        "stats": f"{PONDER} memory stats --memory {runs / 'a'} --json",
        "import": f"{PONDER} memory import /dev/null --memory {runs / 'a'}",
    }
    out = {k: _in_namespace(f"{ro} && {cmd}", tmp_path) for k, cmd in cases.items()}
    assert out["resume"].returncode == 2
    _one_line_error(out["resume"].stderr, "read-only", "cp -r")
    assert out["new run"].returncode == 2
    _one_line_error(out["new run"].stderr, "read-only", "--runs-dir")
    assert out["report"].returncode == 2
    _one_line_error(out["report"].stderr, "read-only", "--out")
    assert out["import"].returncode == 2
    _one_line_error(out["import"].stderr, "not writable")
    assert out["ls"].returncode == 0, out["ls"].stderr
    assert len(json.loads(out["ls"].stdout)) == len(_memory(runs / "a")) > 0
    assert out["stats"].returncode == 0 and json.loads(out["stats"].stdout)["total"] > 0


@needs_mounts
def test_a_full_disk_says_so_and_loses_nothing(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    flags = " ".join(shlex.quote(x) for x in RUN[1:]).replace("--tasks 4", "--tasks 40")
    run = f"{PONDER} run {flags} --runs-dir {disk}/runs --name a"
    script = (
        f"mount -t tmpfs -o size=400k tmpfs {disk} && ({run}; echo rc=$? >&2) && "
        f"cp -r {disk}/runs {tmp_path}/at-full && "  # what the full disk held
        f"mount -o remount,size=64m {disk} && {PONDER} run --name a --resume --runs-dir {disk}/runs "
        f"--no-progress && cp -r {disk}/runs {tmp_path}/after"
    )
    out = _in_namespace(script, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "rc=2" in out.stderr
    _one_line_error(out.stderr.replace("rc=2", ""), "the disk is full", "--resume")
    kept = tmp_path / "at-full" / "a"
    logged = _ids(kept) if (kept / "episodes.jsonl").exists() else []
    after = tmp_path / "after" / "a"
    assert check_run(after) == [] and len(_ids(after)) == 40
    assert set(logged) <= set(_ids(after))  # what was logged before the disk filled is still there
