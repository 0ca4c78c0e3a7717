"""One writer per memory directory, readers alongside: real subprocesses, real flock, real Chroma."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ponder.errors import ConfigError
from ponder.memory import MemoryStore, Provenance, Reflection
from ponder.memory.lock import WRITER_LOCK, WriterLock

# A writer driven over stdin: "add N" adds a batch and answers "committed TOTAL"; "quit" closes.
_WRITER = textwrap.dedent(
    """
    import sys
    from ponder.memory import MemoryStore, Reflection

    store = MemoryStore.open(sys.argv[1], embedder="hashing", mode="w")
    print("ready", flush=True)
    batch = 0
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "add":
            store.add_many(
                [Reflection(f"lesson {batch}-{i} about topic{batch}x{i}", id=f"b{batch}-{i}") for i in range(int(cmd[1]))]
            )
            batch += 1
            print("committed", store.count(), flush=True)
        elif cmd[0] == "quit":
            store.close()
            print("closed", flush=True)
            break
    """
)


def _writer(path):
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def _send(proc, line):
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


@pytest.fixture
def path(tmp_path):
    p = tmp_path / "mem"
    MemoryStore.open(p, embedder="hashing").close()  # create it
    return p


def test_a_second_writer_gets_a_clear_error_then_waits_for_the_first(path):
    proc = _writer(path)
    try:
        t0 = time.monotonic()
        with pytest.raises(ConfigError) as err:
            MemoryStore.open(path, mode="w", lock_timeout=0.3)
        assert time.monotonic() - t0 >= 0.3
        msg = str(err.value)
        assert re.fullmatch(
            rf"memory {re.escape(str(path))} is being written by pid {proc.pid} \(.*-c .*\) since \S+; "
            r"wait for it, or pass another --memory",
            msg,
        ), msg
        with MemoryStore.open(path, mode="r") as reader:  # a reader needs no lock
            assert reader.count() == 0
        # the writer finishes 0.5 s from now; a patient second writer gets the directory then
        threading.Timer(0.5, _send, (proc, "quit")).start()
        t0 = time.monotonic()
        with MemoryStore.open(path, mode="w", lock_timeout=30) as second:
            assert time.monotonic() - t0 >= 0.4
            second.add(Reflection("the second writer's lesson", id="w2"))
        assert WriterLock.holder(path).pid == os.getpid()  # the file names the last holder
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_writer_frees_the_lock_and_keeps_its_commits(path):
    proc = _writer(path)
    assert _send(proc, "add 3") == "committed 3"
    os.kill(proc.pid, signal.SIGKILL)  # no cleanup runs: the OS drops the flock
    proc.wait()
    assert (path / WRITER_LOCK).exists()  # the file stays; only the flock mattered
    with MemoryStore.open(path, mode="w", lock_timeout=0) as store:
        assert store.count() == 3
        assert store.get("b0-2").text == "lesson 0-2 about topic0x2"


def test_a_reader_in_another_process_sees_every_commit(path):
    proc = _writer(path)
    try:
        reader = MemoryStore.open(path, mode="r")  # long-lived, opened before the commits
        assert reader.count() == 0 and reader.search("lesson") == []
        for batch in range(4):
            assert _send(proc, "add 5") == f"committed {5 * (batch + 1)}"
            assert reader.count() == 5 * (batch + 1)
            assert reader.get(f"b{batch}-4").text == f"lesson {batch}-4 about topic{batch}x4"
            # search needs the reader's HNSW index reloaded: the store does it when the stamp moved
            hit = reader.search(f"lesson {batch}-3 about topic{batch}x3", k=1)[0]
            assert hit.record.id == f"b{batch}-3" and hit.similarity > 0.99
            assert len(reader.search("lesson about topic", k=100)) == 5 * (batch + 1)
        reader.close()
        assert _send(proc, "quit") == "closed"
    finally:
        proc.kill()
        proc.wait()


def test_read_only_mode_refuses_writes_and_needs_an_existing_store(path, tmp_path):
    (tmp_path / "x.jsonl").write_text("")
    with MemoryStore.open(path, mode="r") as ro:
        assert ro.mode == "r"
        for call in (
            lambda: ro.add(Reflection("x")),
            lambda: ro.add_many([]),
            lambda: ro.delete(["a"]),
            lambda: ro.delete_where(kind="reflection"),
            lambda: ro.clear(),
            lambda: ro.import_jsonl(tmp_path / "x.jsonl"),
        ):
            with pytest.raises(ConfigError, match=r"is open read-only \(mode='r'\); open it with mode='w'"):
                call()
    with pytest.raises(ConfigError, match="no memory at"):
        MemoryStore.open(tmp_path / "nothing-here", mode="r")
    assert not (tmp_path / "nothing-here").exists()
    with pytest.raises(ConfigError, match=r"no memory collection 'other'.*it has: ponder"):
        MemoryStore.open(path, mode="r", collection="other")
    with pytest.raises(ConfigError, match="mode must be 'r'"):
        MemoryStore.open(path, mode="a")


def test_one_process_shares_the_writer_lock_and_threads_share_a_store(path):
    a = MemoryStore.open(path, lock_timeout=0)
    b = MemoryStore.open(path, lock_timeout=0)  # same process: no self-deadlock
    a.close()
    errors = []

    def work(t):
        try:
            for i in range(10):
                b.add(
                    Reflection(
                        f"thread {t} lesson {i}", provenance=Provenance(run_id=f"t{t}"), id=f"t{t}-{i}"
                    )
                )
                assert b.search(f"thread {t} lesson {i}", k=1)[0].record.id == f"t{t}-{i}"
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and b.count() == 40
    b.close()
    # every reference released: another process can write now
    proc = _writer(path)
    assert _send(proc, "quit") == "closed"
    proc.wait()
