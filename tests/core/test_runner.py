import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from ponder.cli import main
from ponder.config import RunConfig
from ponder.errors import ConfigError, UnknownName
from ponder.report import compare_runs
from ponder.runner import run


def _cfg(tmp_path, **kw):
    base = {
        "agent": "retry",
        "env": "math",
        "tasks": 4,
        "trials": 3,
        "policy": "scripted",
        "script": ("Answer: 13", "Answer: 10"),
        "runs_dir": str(tmp_path),
        "embedder": "hashing",
        "concurrency": 2,
    }
    return RunConfig(**{**base, **kw})


def test_run_writes_the_run_directory(tmp_path):
    result = run(_cfg(tmp_path, name="r"), progress=False)
    d = tmp_path / "r"
    for f in (
        "config.yaml",
        "episodes.jsonl",
        "checkpoints.sqlite",
        "report.md",
        "summary.json",
        "success_by_trial.png",
    ):
        assert (d / f).exists(), f
    eps = [json.loads(x) for x in (d / "episodes.jsonl").read_text().splitlines()]
    assert sorted(e["task_id"] for e in eps) == [f"math/L1/{i}" for i in range(4)]
    e = eps[0]
    assert set(e) >= {
        "episode_id",
        "task_id",
        "trials",
        "prompt_tokens",
        "completion_tokens",
        "seconds",
        "success",
    }
    assert all({"action", "success", "feedback", "reflection"} <= set(t) for t in e["trials"])
    s = result.summary
    assert len(s["success_by_trial"]) == 3 and s["success_by_trial"] == sorted(s["success_by_trial"])
    assert (d / "success_by_trial.png").read_bytes()[:4] == b"\x89PNG"
    from ponder.memory import MemoryStore

    with MemoryStore.open(d / "memory") as store:  # every episode is an experience, with its outcome
        exps = {x.provenance.task_id: x for x in store.list(kind="experience")}
        assert set(exps) == {e["task_id"] for e in eps}
        for e in eps:
            x = exps[e["task_id"]]
            assert x.outcome == ("success" if e["success"] else "failure")
            assert [t["action"] for t in x.trajectory] == [t["action"] for t in e["trials"]]
            assert x.task.startswith("What is")


def test_reflexion_run_stores_reflections_in_memory(tmp_path):
    cfg = _cfg(tmp_path, agent="reflexion", name="rx", script=("Answer: 0",))
    result = run(cfg, progress=False)
    from ponder.memory import MemoryStore

    store = MemoryStore.open(tmp_path / "rx" / "memory", embedder="hashing")
    try:
        refl = store.list(kind="reflection")
        assert len(refl) == 4 * 2  # 4 tasks, the 2 non-final failed trials of each reflected on
        assert {r.provenance.run_id for r in refl} == {"rx"}
        assert {r.provenance.task_id for r in refl} == {f"math/L1/{i}" for i in range(4)}
    finally:
        store.close()
    assert all(t["reflection"] for e in result.episodes for t in e["trials"][:2])


def test_existing_run_dir_needs_resume(tmp_path):
    run(_cfg(tmp_path, name="r"), progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        run(_cfg(tmp_path, name="r"), progress=False)
    again = run(_cfg(tmp_path, name="r", resume=True), progress=False)
    assert len(again.episodes) == 4
    lines = (tmp_path / "r" / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == 4


def test_unknown_names_fail_before_writing(tmp_path):
    with pytest.raises(UnknownName, match="agent"):
        run(_cfg(tmp_path, agent="nope", name="a"), progress=False)
    with pytest.raises(UnknownName, match="env"):
        run(_cfg(tmp_path, env="nope", name="b"), progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_compare_runs(tmp_path):
    a = run(_cfg(tmp_path, name="a"), progress=False)
    b = run(_cfg(tmp_path, name="b", script=("Answer: 0",)), progress=False)
    summaries, report, plot = compare_runs([a.run_dir, b.run_dir], tmp_path / "cmp")
    assert set(summaries) == {"a", "b"} and plot.exists()
    assert "solved by a but not b" in report.read_text()


SCRIPTED = ["--agent", "retry", "--tasks", "2", "--trials", "1", "--policy", "scripted", "--script"]


def test_cli_run_and_errors(tmp_path, capsys):
    rc = main(["run", *SCRIPTED, "Answer: 13", "--runs-dir", str(tmp_path), "--name", "c", "--no-progress"])
    assert rc == 0 and (tmp_path / "c" / "report.md").exists()
    assert (
        main(["run", "--agent", "nope", "--policy", "scripted", "--script", "x", "--runs-dir", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown agent 'nope'" in err and len(err.strip().splitlines()) == 1
    assert main(["run", "--tasks", "0", "--runs-dir", str(tmp_path)]) == 2
    assert main(["report", str(tmp_path / "c"), "--out", str(tmp_path / "rep")]) == 0
    assert main(["report", str(tmp_path / "nothing")]) == 2


_SLOW_RUN = textwrap.dedent(
    """
    import sys, time
    from ponder.config import RunConfig
    from ponder.models import ScriptedPolicy
    from ponder.runner import run

    def slow(prompt):
        time.sleep(0.25)
        return "Answer: 0"

    cfg = RunConfig(agent="reflexion", env="math", tasks=6, trials=3, concurrency=2, policy="scripted",
                    script=("unused",), runs_dir=sys.argv[1], name="k", embedder="hashing",
                    resume=len(sys.argv) > 2)
    run(cfg, policy=ScriptedPolicy(slow), progress=False)
    """
)


def test_kill_and_resume_loses_and_duplicates_nothing(tmp_path):
    script = tmp_path / "slow_run.py"
    script.write_text(_SLOW_RUN)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], start_new_session=True)
    log = tmp_path / "k" / "episodes.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    logged = {json.loads(x)["episode_id"] for x in log.read_text().splitlines()}
    assert 2 <= len(logged) < 6
    with sqlite3.connect(tmp_path / "k" / "checkpoints.sqlite") as db:
        threads = {r[0] for r in db.execute("select distinct thread_id from checkpoints")}
    in_flight = threads - logged

    subprocess.run([sys.executable, str(script), str(tmp_path), "resume"], check=True, timeout=120)
    eps = [json.loads(x) for x in log.read_text().splitlines()]
    ids = [e["episode_id"] for e in eps]
    assert len(ids) == len(set(ids)) == 6
    by_id = {e["episode_id"]: e for e in eps}
    for eid in in_flight:  # continued from their checkpoints, not restarted
        assert by_id[eid]["resumed"]
        assert [t["trial"] for t in by_id[eid]["trials"]] == [0, 1, 2]
    assert all(len(e["trials"]) == 3 for e in eps)
    from ponder.memory import MemoryStore

    with MemoryStore.open(
        tmp_path / "k" / "memory"
    ) as store:  # none twice: 2 reflections and 1 experience each
        assert sorted(r.provenance.episode_id for r in store.list(kind="reflection")) == sorted(ids * 2)
        assert sorted(r.provenance.episode_id for r in store.list(kind="experience")) == sorted(ids)


def test_resume_refuses_other_settings_and_keeps_saved_ones(tmp_path, capsys):
    args = ["run", *SCRIPTED, "Answer: 13", "--runs-dir", str(tmp_path), "--name", "r", "--no-progress"]
    assert main(args) == 0
    # only --name and --resume: the saved settings are used
    assert main(["run", "--name", "r", "--resume", "--runs-dir", str(tmp_path), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["run", "--name", "r", "--resume", "--tasks", "5", "--runs-dir", str(tmp_path)]) == 2
    assert "tasks=5 (was 2)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="other settings"):
        run(_cfg(tmp_path, name="r", resume=True, trials=4), progress=False)


def test_cli_reads_a_yaml_config(tmp_path):
    (tmp_path / "run.yaml").write_text(
        "agent: retry\nenv: math\nenv_kwargs: {level: 3}\ntasks: 2\ntrials: 1\npolicy: scripted\n"
        f"script: ['Answer: 1']\nruns_dir: {tmp_path}\nname: y\n"
    )
    assert main(["run", "--config", str(tmp_path / "run.yaml"), "--trials", "2", "--no-progress"]) == 0
    eps = [json.loads(x) for x in (tmp_path / "y" / "episodes.jsonl").read_text().splitlines()]
    assert {e["task_id"] for e in eps} == {"math/L3/0", "math/L3/1"} and all(
        e["trials_used"] == 2 for e in eps
    )
