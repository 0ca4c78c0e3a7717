"""MemoryStore over a real embedded Chroma: the hashing embedder for speed, real MiniLM where marked."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from ponder.errors import BackendError, ConfigError, UnknownName
from ponder.memory import (
    Experience,
    HashingEmbeddingFunction,
    Insight,
    Memory,
    MemoryStore,
    Provenance,
    Reflection,
    build_where,
    make_embedder,
    record_from_dict,
)


def _refl(text, *, task="t1", env="math", created="2025-01-01T00:00:00.000000+00:00", trusted=False, id=None):
    prov = Provenance(env=env, task_id=task, created_at=created, trusted=trusted)
    return Reflection(text, provenance=prov, **({"id": id} if id else {}))


@pytest.fixture
def filled(store):
    store.add_many(
        [
            _refl(
                "carry the one when adding numbers",
                task="math/1",
                created="2025-01-01T00:00:01.000000+00:00",
                id="r1",
            ),
            _refl(
                "add the numbers column by column",
                task="math/2",
                created="2025-01-01T00:00:02.000000+00:00",
                id="r2",
            ),
            _refl("paint the fence before it rains", env="art", task="art/1", trusted=True, id="r3"),
            Insight("always check the carry when adding numbers", id="i1"),
            Experience(
                "add 6 and 7", [{"action": "13", "observation": "correct"}], "success", score=1.0, id="e1"
            ),
        ]
    )
    return store


def test_a_store_is_a_memory_the_agents_can_take(filled):
    assert isinstance(filled, Memory)
    assert [r.id for r in filled.get_many(["i1", "r1", "nope"])] == ["i1", "r1"]
    assert filled.embedder is not None


def test_add_get_round_trip_and_upsert(store):
    r = _refl("carry the one", id="r1")
    assert store.add(r) == "r1"
    assert store.get("r1") == r
    assert store.get("missing") is None
    r2 = Reflection("carry the one, then check", trial=2, provenance=r.provenance, id="r1")
    store.add(r2)  # same id: overwritten, not duplicated
    assert store.count() == 1 and store.get("r1") == r2


def test_add_many_keeps_order_and_last_write_of_an_id(store):
    ids = store.add_many([_refl("a", id="x"), _refl("b", id="y"), _refl("c", id="x")])
    assert ids == ["x", "y", "x"]
    assert store.count() == 2 and store.get("x").text == "c"


def test_add_refuses_other_objects(store):
    with pytest.raises(ConfigError, match="not dict"):
        store.add({"text": "hi"})


def test_list_newest_first_with_kind_where_and_limit(filled):
    assert [r.id for r in filled.list(kind="reflection")] == ["r2", "r1", "r3"]
    assert [r.id for r in filled.list(kind="reflection", limit=1)] == ["r2"]
    assert [r.id for r in filled.list(where={"task_id": "math/1", "kind": "reflection"})] == ["r1"]
    assert [r.id for r in filled.list(where={"trusted": True})] == ["r3"]
    assert {r.id for r in filled.list(where={"task_id": ["math/1", "art/1"]})} == {"r1", "r3"}
    assert [r.id for r in filled.list(where={"score": {"$gte": 0.5}})] == ["e1"]
    assert {r.kind for r in filled.list(kind=["insight", "experience"])} == {"insight", "experience"}
    assert len(filled.list()) == 5


def test_search_nearest_first_and_filtered(filled):
    hits = filled.search("adding numbers with a carry", k=3)
    assert len(hits) == 3
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    assert all(abs(h.similarity - (1 - h.distance)) < 1e-9 for h in hits)
    assert hits[0].record.id in {"r1", "i1"}
    assert [h.record.id for h in filled.search("adding numbers", kind="insight")] == ["i1"]
    only = filled.search("adding numbers", kind="reflection", where={"task_id": "math/2"}, k=10)
    assert [h.record.id for h in only] == ["r2"]  # k larger than the matches is fine
    assert filled.search("adding numbers", where={"env": "nowhere"}) == []
    paint = filled.search("paint the fence before it rains", k=1)[0]
    assert paint.record.id == "r3" and paint.similarity > 0.99


def test_search_empty_store_and_bad_k(store):
    assert store.search("anything") == []
    with pytest.raises(ConfigError, match="k must be"):
        store.search("anything", k=0)


def test_delete(filled):
    filled.delete("r1")
    filled.delete(["r2", "i1", "unknown-id"])
    filled.delete([])  # a no-op, not "delete everything"
    assert filled.count() == 2
    assert {r.id for r in filled.list()} == {"r3", "e1"}


def test_stats(filled):
    s = filled.stats()
    assert s["total"] == 5
    assert s["by_kind"] == {"reflection": 3, "experience": 1, "insight": 1, "design": 0}
    assert s["embedder"] == "ponder-hashing(dim=256)" and s["dim"] == 256
    assert s["path"] == str(filled.path) and s["collection"] == "ponder"


def test_export_jsonl_round_trips(filled, tmp_path):
    out = tmp_path / "out" / "memory.jsonl"
    assert filled.export(out) == 5
    lines = out.read_text().splitlines()
    records = [record_from_dict(json.loads(line)) for line in lines]
    assert {r.id for r in records} == {"r1", "r2", "r3", "i1", "e1"}
    assert records == sorted(records, key=lambda r: (r.provenance.created_at, r.id))  # oldest first
    assert records[[r.id for r in records].index("e1")] == filled.get("e1")
    assert not (tmp_path / "out" / "memory.jsonl.tmp").exists()


def test_add_many_and_delete_split_at_max_batch_size(store, monkeypatch):
    monkeypatch.setattr(store._client, "get_max_batch_size", lambda: 3)
    calls = {"upsert": [], "delete": []}
    col = store.collection
    real_upsert, real_delete = col.upsert, col.delete

    def upsert(**kw):
        calls["upsert"].append(len(kw["ids"]))
        return real_upsert(**kw)

    def delete(**kw):
        calls["delete"].append(len(kw["ids"]))
        return real_delete(**kw)

    monkeypatch.setattr(col, "upsert", upsert)
    monkeypatch.setattr(col, "delete", delete)
    ids = store.add_many([_refl(f"lesson number {i}", id=f"r{i}") for i in range(8)])
    assert calls["upsert"] == [3, 3, 2]
    assert store.count() == 8
    store.delete(ids[:7])
    assert calls["delete"] == [3, 3, 1]
    assert store.count() == 1


def test_reopen_reuses_the_persisted_embedder(tmp_path):
    path = tmp_path / "mem"
    with MemoryStore.open(path, embedder=make_embedder("hashing", dim=64)) as s:
        s.add(_refl("carry the one", id="r1"))
    with MemoryStore.open(path) as s:  # no embedder: Chroma rebuilds ponder-hashing(dim=64) from the config
        assert isinstance(s.embedder, HashingEmbeddingFunction) and s.embedder.dim == 64
        assert s.search("carry", k=1)[0].record.id == "r1"
    with MemoryStore.open(path, embedder=HashingEmbeddingFunction(dim=64)) as s:  # the same one is fine
        assert s.count() == 1


def test_reopen_with_another_embedder_is_a_config_error(tmp_path):
    path = tmp_path / "mem"
    MemoryStore.open(path, embedder=make_embedder("hashing", dim=64)).close()
    with pytest.raises(ConfigError, match=r"ponder-hashing\(dim=64\) \(dim 64\).*ponder-minilm \(dim 384\)"):
        MemoryStore.open(path, embedder="minilm")
    with pytest.raises(ConfigError, match=r"ponder-hashing\(dim=64\).*ponder-hashing\(dim=32\)"):
        MemoryStore.open(path, embedder=make_embedder("hashing", dim=32))
    with MemoryStore.open(path) as s:  # the failed opens released the directory
        assert s.count() == 0


def test_embedder_can_be_a_hashing_embedder_but_not_any_callable(tmp_path):
    from ponder.models import HashingEmbedder

    with MemoryStore.open(tmp_path / "a", embedder=HashingEmbedder(dim=32)) as s:
        assert s.stats()["embedder"] == "ponder-hashing(dim=32)"
    with pytest.raises(ConfigError, match="Chroma EmbeddingFunction"):
        MemoryStore.open(tmp_path / "b", embedder=lambda texts: [[1.0, 0.0] for _ in texts])


def test_collections_are_separate(tmp_path):
    with MemoryStore.open(tmp_path, embedder="hashing", collection="mem-a") as a:
        a.add(_refl("in a"))
    with MemoryStore.open(tmp_path, embedder="hashing", collection="mem-b") as b:
        assert b.count() == 0


def test_errors(tmp_path, store):
    with pytest.raises(UnknownName, match="unknown embedder 'bert'; choose one of: hashing, minilm"):
        make_embedder("bert")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        MemoryStore.open(tmp_path / "file", embedder="hashing")
    with pytest.raises(ConfigError, match="unknown memory filter key 'taskid'"):
        store.list(where={"taskid": "x"})
    store.close()
    store.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        store.count()


def test_build_where():
    assert build_where() is None
    assert build_where({"task_id": "a"}) == {"task_id": "a"}
    assert build_where(kind="insight") == {"kind": "insight"}
    assert build_where({"env": "math", "status": "active"}, kind="insight") == {
        "$and": [{"kind": "insight"}, {"env": "math"}, {"status": "active"}]
    }
    raw = {"$or": [{"env": "a"}, {"env": "b"}]}
    assert build_where(raw) == raw
    with pytest.raises(ConfigError, match="unknown memory kind"):
        build_where(kind="dream")
    with pytest.raises(ConfigError, match="must be a str"):
        build_where({"env": None})


# ------------------------------------------------------------------ real MiniLM


@pytest.fixture(scope="module")
def minilm():
    return make_embedder("minilm")


@pytest.mark.real_model
def test_minilm_semantic_retrieval(tmp_path, minilm):
    with MemoryStore.open(tmp_path / "mem", embedder=minilm) as s:
        s.add_many(
            [
                _refl(
                    "When digits in a column sum past nine, write the units digit and carry one to the next column.",
                    id="carry",
                ),
                _refl(
                    "Use thin layers of paint and let each coat dry before brushing on the next.", id="paint"
                ),
            ]
        )
        hits = s.search("How do I add two multi-digit numbers?", k=2)
        assert [h.record.id for h in hits] == ["carry", "paint"]
        assert hits[0].similarity > hits[1].similarity + 0.1
        vec = minilm(["x"])[0]
        assert len(vec) == 384 and abs(sum(v * v for v in vec) - 1) < 1e-4


_CHILD = textwrap.dedent(
    """
    import json, sys
    from ponder.memory import MemoryStore

    with MemoryStore.open(sys.argv[1]) as s:  # no embedder passed
        hits = s.search("How do I add two multi-digit numbers?", k=2)
        out = {"count": s.count(), "embedder": s.stats()["embedder"], "ids": [h.record.id for h in hits]}

    import chromadb
    from chromadb.config import Settings
    client = chromadb.PersistentClient(sys.argv[1], settings=Settings(anonymized_telemetry=False))
    col = client.get_collection("ponder")  # plain Chroma: the EF comes back from the persisted config
    out["raw"] = col.query(query_texts=["painting a wall"], n_results=1)["ids"][0]
    print(json.dumps(out))
    """
)


@pytest.mark.real_model
def test_minilm_store_reopens_in_a_new_process(tmp_path, minilm):
    path = tmp_path / "mem"
    with MemoryStore.open(path) as s:  # the default embedder is MiniLM
        assert s.stats()["embedder"] == "ponder-minilm"
        s.add(_refl("When a column sums past nine, carry one to the next column.", id="carry"))
        s.add(_refl("Let each coat of paint dry before the next one.", id="paint"))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"count": 2, "embedder": "ponder-minilm", "ids": ["carry", "paint"], "raw": ["paint"]}
