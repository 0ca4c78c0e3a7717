"""MemoryStore on a real Chroma server (``chroma run`` on loopback, started and stopped here)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ponder.errors import BackendError, ConfigError
from ponder.memory import Experience, Insight, MemoryStore, Provenance, Reflection
from ponder.memory.backend import parse_url
from ponder.memory.store import open_store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chroma_exe() -> str:
    exe = Path(sys.executable).with_name("chroma")
    return str(exe) if exe.exists() else shutil.which("chroma") or pytest.fail("no chroma executable")


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    port = _free_port()
    data = tmp_path_factory.mktemp("chroma-server")
    log = (data.parent / "chroma-server.log").open("w")
    proc = subprocess.Popen(
        [_chroma_exe(), "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(
                    f"chroma run did not start: {(data.parent / 'chroma-server.log').read_text()[-2000:]}"
                )
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def _prov(**kw):
    return Provenance(run_id="run-1", episode_id="ep-1", env="math", task_id="math/1", **kw)


def test_round_trip_on_a_server(url, tmp_path):
    with MemoryStore.connect(url, embedder="hashing", collection="round-trip") as store:
        assert store.path is None and store.url == url
        records = [
            Reflection("carry the one when adding", provenance=_prov(), id="r1"),
            Experience(
                "add 6 and 7",
                [{"action": "13", "observation": "ok"}],
                "success",
                1.0,
                provenance=_prov(),
                id="e1",
            ),
            Insight("check the carry", upvotes=3, supports=["ep-1"], provenance=_prov(), id="i1"),
        ]
        store.add_many(records)
        assert [store.get(r.id) for r in records] == records
        assert store.search("carry the one when adding", k=1)[0].record.id == "r1"
        assert [r.id for r in store.list(where={"outcome": "success"})] == ["e1"]
        s = store.stats()
        assert s["total"] == 3 and s["url"] == url and s["path"] is None
        assert s["insights"]["top"][0]["net"] == 3
        n = store.export(tmp_path / "out.jsonl")
        assert n == 3 and store.clear() == 3 and store.count() == 0
        assert store.import_jsonl(tmp_path / "out.jsonl") == 3
        assert [store.get(r.id) for r in records] == records
    # a new client rebuilds the embedder from the collection's config; mode "r" refuses writes
    with open_store(memory_url=url, collection="round-trip") as ro:
        assert ro.mode == "r" and ro.stats()["embedder"] == "ponder-hashing(dim=256)"
        assert ro.search("check the carry", k=1)[0].record.id == "i1"
        with pytest.raises(ConfigError, match="read-only"):
            ro.add(Reflection("nope"))


def test_adds_split_at_the_server_max_batch_size(url, monkeypatch):
    with MemoryStore.connect(url, embedder="hashing", collection="batches") as store:
        assert store._client.get_max_batch_size() > 1000  # the server's own limit
        monkeypatch.setattr(store._client, "get_max_batch_size", lambda: 4)
        sizes = []
        real = store.collection.upsert
        monkeypatch.setattr(
            store.collection, "upsert", lambda **kw: (sizes.append(len(kw["ids"])), real(**kw))
        )
        store.add_many([Reflection(f"lesson {i}", id=f"r{i}") for i in range(10)])
        assert sizes == [4, 4, 2] and store.count() == 10
        assert len(store.get_many([f"r{i}" for i in range(10)])) == 10  # gets split too
        assert store.delete_where(kind="reflection") == 10 and store.count() == 0


def test_a_second_client_sees_commits_at_once(url):
    with (
        MemoryStore.connect(url, embedder="hashing", collection="shared") as writer,
        MemoryStore.connect(url, collection="shared", mode="r") as reader,
    ):
        for i in range(3):
            writer.add(Reflection(f"lesson number {i}", id=f"r{i}"))
            assert reader.count() == i + 1
            assert reader.search(f"lesson number {i}", k=1)[0].record.id == f"r{i}"


def test_a_reader_in_another_process(url):
    with MemoryStore.connect(url, embedder="hashing", collection="subprocess") as store:
        store.add(Reflection("mix the paint first", id="p1"))
    code = (
        "import json, sys\nfrom ponder.memory.store import open_store\n"
        "with open_store(memory_url=sys.argv[1], collection='subprocess') as s:\n"
        "    print(json.dumps([s.count(), s.search('mix the paint first', k=1)[0].record.id]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, url], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout) == [1, "p1"]


def test_unreachable_and_malformed_urls():
    t0 = time.monotonic()
    with pytest.raises(
        BackendError, match=r"cannot reach the Chroma server at http://127.0.0.1:\d+ .*chroma run"
    ):
        MemoryStore.connect(f"http://127.0.0.1:{_free_port()}")
    assert time.monotonic() - t0 < 5
    for bad in ("ftp://x:1", "http://", "http://h:99999", "http://h:1/api"):
        with pytest.raises(ConfigError, match="bad Chroma server URL"):
            MemoryStore.connect(bad)
    assert parse_url("localhost:9000") == ("localhost", 9000, False)
    assert parse_url("https://h") == ("h", 443, True) and parse_url("http://h") == ("h", 8000, False)
    with pytest.raises(ConfigError, match="pass one of --memory DIR"):
        open_store()
    with pytest.raises(ConfigError, match="pass one of --memory DIR"):
        open_store("a", "http://b")
