"""Bad input to ``ponder run`` costs nothing: one line on stderr, exit 2, and nothing left behind
that blocks the corrected command."""

from __future__ import annotations

import pytest

from ponder.cli import main

RUN = ["run", "--agent", "retry", "--env", "math", "--policy", "scripted", "--script", "Answer: 4",
       "--tasks", "1", "--no-progress"]  # fmt: skip


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def call(*args: str) -> tuple[int, str]:
        code = main([*args])
        return code, capsys.readouterr().err.strip()

    return call


def _one_line(err: str) -> str:
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_resume_of_a_run_that_does_not_exist_is_refused(cli, tmp_path):
    code, err = cli(*RUN, "--name", "typo", "--resume")
    assert code == 2 and "no run to resume at runs/typo" in _one_line(err)
    assert not (tmp_path / "runs").exists()  # no fresh run started under the typo
    assert cli(*RUN, "--name", "typo")[0] == 0
    assert cli(*RUN, "--name", "typo", "--resume")[0] == 0


def test_a_config_value_of_the_wrong_type_is_one_line(cli, tmp_path):
    (tmp_path / "c.yaml").write_text("agent: retry\nenv: math\ntasks: five\n")
    code, err = cli("run", "--config", str(tmp_path / "c.yaml"))
    assert code == 2 and _one_line(err) == "error: tasks must be an int, got 'five'"


def test_a_bad_search_option_leaves_nothing_that_blocks_the_fixed_command(cli, tmp_path):
    search = ["--agent", "search", "--prm", "verifier", "--name", "s"]
    code, err = cli(*RUN, *search, "--search-arg", "beam_width=abc")
    assert code == 2 and "search option beam_width must be a number (int), got 'abc'" in _one_line(err)
    assert not (tmp_path / "runs" / "s").exists()
    assert cli(*RUN, *search, "--search-arg", "beam_width=2")[0] == 0  # the corrected command just works


def test_memory_none_keeps_no_store(cli, tmp_path):
    for agent in ("retry", "reflexion"):
        assert cli(*RUN, "--agent", agent, "--trials", "2", "--memory", "none", "--name", agent)[0] == 0
        assert not (tmp_path / "runs" / agent / "memory").exists()
    assert not (tmp_path / "none").exists()  # not a store named "none" in the working directory
    code, err = cli(*RUN, "--memory", "none", "--memory-modes", "reflective", "--name", "x")
    assert code == 2 and "memory none turns memory off" in _one_line(err)


def test_report_bad_input_writes_nothing(cli, tmp_path):
    assert cli(*RUN, "--name", "r")[0] == 0
    (tmp_path / "f").write_text("")
    code, err = cli("report", "runs/r", "--out", "f")
    assert code == 2 and "--out f is a file" in _one_line(err)
    code, err = cli("report", "nope", "runs/r")
    assert code == 2 and "nope is not a run directory" in _one_line(err)
    assert not (tmp_path / "compare").exists() and not (tmp_path / "runs" / "compare").exists()
    with (tmp_path / "runs" / "r" / "episodes.jsonl").open("a") as f:
        f.write('{"episode_id": "torn", "tr')  # a torn last line, as a kill leaves it
    assert cli("report", "runs/r")[0] == 0


def test_a_huge_task_count_is_refused_at_once(cli, tmp_path):
    code, err = cli(*RUN, "--tasks", "1000000000", "--name", "big")
    assert code == 2 and "tasks must be <= 100,000" in _one_line(err)
    assert not (tmp_path / "runs" / "big").exists()


def test_serve_on_a_taken_port_says_so_before_loading_the_model(cli, monkeypatch):
    import socket

    import ponder.models.local

    def never(*a, **k):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(ponder.models.local, "LocalPolicy", never)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = cli("serve", "--port", str(port))
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in _one_line(err)


def test_memory_serve_prints_its_url(tmp_path, monkeypatch, capsys):
    import threading
    import urllib.request

    from ponder.memory import MemoryStore
    from ponder.memory.web import make_server, serve

    made = []
    monkeypatch.setattr("ponder.memory.web.make_server", lambda *a: made.append(make_server(*a)) or made[-1])
    with MemoryStore.open(tmp_path / "mem", embedder="hashing") as store:
        t = threading.Thread(target=serve, args=(store,), kwargs={"port": 0}, daemon=True)
        t.start()
        for _ in range(500):
            if made and "memory browser at" in (out := capsys.readouterr().out):
                break
            threading.Event().wait(0.01)
        url = out.split("memory browser at ")[1].split()[0]
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200
        made[0].shutdown()
        t.join(10)


def test_a_runs_dir_without_write_permission_is_one_line(cli, tmp_path, monkeypatch):
    # root writes anywhere, so the permission bits are what os.access reports for a normal user
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(locked) else real_access(p, m))
    code, err = cli(*RUN, "--runs-dir", str(locked), "--name", "x")
    assert code == 2 and "is not writable (permissions); pass --runs-dir DIR" in _one_line(err)
    assert list(locked.iterdir()) == []
