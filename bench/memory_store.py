"""Throughput and latency of ``MemoryStore`` on embedded Chroma with the MiniLM embedder.

- ingest: records/s of ``add_many`` for fresh records, MiniLM embedding included;
- query p50/p99 at each size: ``search`` with the query embedded by MiniLM, with the query vector
  precomputed (the store's path otherwise unchanged: lock, HNSW query, records rebuilt), and with a
  precomputed vector and ``kind="reflection"`` (a filter matching every record: Chroma's slow case);
- reader reload: a ``mode="r"`` store's ``refresh()`` plus its first search, what a reader pays after
  another process committed (Chroma reloads the HNSW index from disk).

The big collections are built from precomputed vectors (the ingest set's real MiniLM embeddings, tiled
with a little noise and renormalised), written straight to the Chroma collection, so a 100k store takes
about a minute and a half on 2 cores instead of minutes of embedding.

Usage:
    python bench/memory_store.py                          # 2k ingest; 10k and 100k query sizes
    python bench/memory_store.py --sizes 10000 --queries 100 --threads 1
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

TOPICS = [
    "carry",
    "units",
    "fractions",
    "loops",
    "paint",
    "recursion",
    "sorting",
    "parsing",
    "primes",
    "dates",
]
VERBS = ["check", "re-read", "write down", "test", "simplify", "compare", "count", "name", "bound", "trace"]


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        f"Lesson {i}: {rng.choice(VERBS)} the {rng.choice(TOPICS)} before you answer; "
        f"last time the {rng.choice(TOPICS)} step went wrong because I did not {rng.choice(VERBS)} it "
        f"({rng.randint(0, 10**6)})."
        for i in range(n)
    ]


def _records(texts: list[str], start: int = 0) -> list:
    from ponder.memory import Provenance, Reflection

    return [
        Reflection(
            t,
            trial=i % 3,
            provenance=Provenance(run_id=f"run-{i % 7}", env="math", task_id=f"math/L2/{i % 500}"),
            id=f"r{start + i}",
        )
        for i, t in enumerate(texts)
    ]


class _Precomputed:
    """Stands in for the store's EF during a query: returns the query's precomputed vector."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def __call__(self, texts: list[str]) -> list[np.ndarray]:
        return [self.table[t] for t in texts]


def _percentiles(ms: list[float]) -> tuple[float, float]:
    ms = sorted(ms)
    return statistics.median(ms), ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]


def _fill(store, base_vecs: np.ndarray, base_texts: list[str], n: int, rng: np.random.Generator) -> float:
    """Top the store up to ``n`` records from tiled, noised real vectors; return the seconds taken."""
    col, have = store.collection, store.count()
    size = store._client.get_max_batch_size()
    t0 = time.perf_counter()
    for start in range(have, n, size):
        stop = min(n, start + size)
        idx = np.arange(start, stop) % len(base_vecs)
        vecs = base_vecs[idx] + rng.normal(0, 0.02, (stop - start, base_vecs.shape[1])).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        recs = _records([base_texts[i] for i in idx], start)
        col.upsert(
            ids=[r.id for r in recs],
            embeddings=vecs,
            documents=[r.document() for r in recs],
            metadatas=[r.to_metadata() for r in recs],
        )
    return time.perf_counter() - t0


def _queries(
    store, queries: list[str], table: dict[str, np.ndarray], k: int
) -> dict[str, tuple[float, float]]:
    out = {}
    real, pre = store._ef, _Precomputed(table)
    modes = [
        ("embed+query", real, {}, queries),
        ("query only", pre, {}, queries),
        ("query only, kind filter", pre, {"kind": "reflection"}, queries[:50]),  # Chroma's filter is slow
    ]
    for label, ef, kw, qs in modes:
        store._ef = ef
        store.search(qs[0], k=k, **kw)  # warm-up
        ms = []
        for q in qs:
            t0 = time.perf_counter()
            store.search(q, k=k, **kw)
            ms.append(1000 * (time.perf_counter() - t0))
        out[label] = _percentiles(ms)
    store._ef = real
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--ingest", type=int, default=2000, help="records embedded and added for the ingest figure"
    )
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated store sizes for queries")
    ap.add_argument("--queries", type=int, default=200, help="queries per size and mode")
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--dir", help="where the stores go (default: a temporary directory)")
    ap.add_argument("--threads", type=int, help="torch threads for MiniLM (default: torch's choice)")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from ponder.memory import MemoryStore, make_embedder
    from ponder.memory.embeddings import pick_device

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    root = Path(args.dir or tempfile.mkdtemp(prefix="ponder-bench-"))
    ef = make_embedder("minilm")
    t0 = time.perf_counter()
    ef(["warm up the model"])
    print(f"MiniLM load: {time.perf_counter() - t0:.1f} s on {pick_device()}; stores in {root}")

    texts = _texts(args.ingest, seed=0)
    store = MemoryStore.open(root / "store", embedder=ef)
    t0 = time.perf_counter()
    store.add_many(_records(texts))
    ingest_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ef(texts)
    embed_s = time.perf_counter() - t0
    print(
        f"ingest: {args.ingest} records in {ingest_s:.1f} s = {args.ingest / ingest_s:.0f} records/s "
        f"(MiniLM alone {args.ingest / embed_s:.0f} texts/s)"
    )

    base_vecs = np.asarray(
        store.collection.get(ids=[f"r{i}" for i in range(args.ingest)], include=["embeddings"])["embeddings"],
        dtype=np.float32,
    )
    queries = [
        f"how do I {random.Random(i).choice(VERBS)} the {TOPICS[i % len(TOPICS)]} ({i})"
        for i in range(args.queries)
    ]
    table = {q: np.asarray(v, dtype=np.float32) for q, v in zip(queries, ef(queries), strict=True)}
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        build = _fill(store, base_vecs, texts, n, rng)
        print(f"built {store.count()} records (+{build:.0f} s from precomputed vectors)", flush=True)
        lat = _queries(store, queries, table, args.k)
        store.close()
        reader = MemoryStore.open(root / "store", mode="r")
        t0 = time.perf_counter()
        reader.refresh()
        reader.search(queries[0], k=args.k)
        reload_ms = 1000 * (time.perf_counter() - t0)
        reader.close()
        store = MemoryStore.open(root / "store")
        rows.append((n, lat, reload_ms))

    print()
    print(f"ingest (MiniLM embedding included): {args.ingest / ingest_s:,.0f} records/s")
    labels = list(rows[0][1]) if rows else []
    w = max([len(x) + 8 for x in labels] + [20])
    print(f"{'records':>9} | " + " | ".join(f"{x + ' p50/p99':>{w}}" for x in labels) + " | reader reload")
    for n, lat, reload_ms in rows:
        cells = " | ".join(f"{f'{lat[x][0]:.1f} / {lat[x][1]:.1f} ms':>{w}}" for x in labels)
        print(f"{n:>9,} | {cells} | {reload_ms:>10.0f} ms")
    store.close()


if __name__ == "__main__":
    main()
