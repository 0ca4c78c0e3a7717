"""``ValueHeadPRM`` scoring speed on a beam-search-like workload: incremental cache vs full re-read.

Workload: ``--candidates`` solutions to one math question grow one step per round for
``--steps`` rounds; each round scores every candidate's full step list (what beam search asks
of a PRM). Four ways side by side, in one run, on the same backbone (SmolLM2-135M-Instruct by
default):

* incremental, batched: one ``score`` call per round; cached prefixes run only new steps;
* full re-read, batched: one call per round, every candidate read from its first token;
* incremental, one by one: one call per candidate;
* full re-read, one by one.

Each mode starts from an empty cache; reported: wall time over all rounds, tokens run through
the backbone (``usage.tokens``) and the speed-up over full re-read one by one. All modes must
give the same scores (checked, up to 1e-4).

Measured on the 2-core CPU (shared with other jobs, load ~7), SmolLM2-135M, float32,
``--threads 1`` (with torch's default two threads every mode was 3-4x slower on the busy CPU)::

    mode                         wall s   tokens  calls  speed-up
    incremental, batched           8.65     1188      5      3.8x
    full re-read, batched         25.40     4337      5      1.3x
    incremental, one by one       13.94     1188     40      2.4x
    full re-read, one by one      33.02     4337     40      1.0x
    max |score difference| across modes: 1.79e-07

A head on a shallower layer runs only that many decoder layers (``ValueHeadPRM(layer=9)``):
on the same workload, measured in one run (two labelling jobs sharing the CPU), incremental
batched scoring took 6.49 s with all 30 layers and 1.73 s with the first 9 (3.8x).

Usage:
    python bench/prm_speed.py --candidates 8 --steps 5 --device cpu --threads 1
"""

from __future__ import annotations

import argparse
import random
import time


def workload(candidates: int, steps: int, seed: int = 0) -> list[list[list[str]]]:
    """Per round, the candidates' step lists: round r holds r + 1 steps each."""
    r = random.Random(seed)
    sols: list[list[str]] = [[] for _ in range(candidates)]
    rounds = []
    for k in range(steps):
        for s in sols:
            a, b = r.randint(10, 99), r.randint(2, 12)
            s.append(
                f"Step {k + 1}: we multiply {a} by {b}, which gives {a * b}, and keep it for the next step."
            )
        rounds.append([list(s) for s in sols])
    return rounds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--model", default=None, help="local model folder (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default torch's)")
    ap.add_argument(
        "--layer", type=int, default=9, help="also time a head reading this depth (only these layers run)"
    )
    args = ap.parse_args(argv)

    import torch

    from ponder.models.prm_value import ValueHeadPRM

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    base = ValueHeadPRM(args.model, device=args.device, dtype=args.dtype)
    print(
        f"load: {time.perf_counter() - t0:.1f} s  ({base.path}, {base.device}, {torch.get_num_threads()} threads)"
    )
    question = "What is 47 * 8 - 19 + 23 * 6?"
    rounds = workload(args.candidates, args.steps)
    base.score(question, [["warm-up step."]])  # first-call overheads out of the timings

    rows, results = [], {}
    for name, incremental, batched in (
        ("incremental, batched", True, True),
        ("full re-read, batched", False, True),
        ("incremental, one by one", True, False),
        ("full re-read, one by one", False, False),
    ):
        prm = ValueHeadPRM(backbone=base, incremental=incremental)
        prm.head = base.head
        scores = []
        t = time.perf_counter()
        for cands in rounds:
            if batched:
                scores.append(prm.score(question, cands))
            else:
                scores.append([prm.score(question, [c])[0] for c in cands])
        wall = time.perf_counter() - t
        results[name] = scores
        rows.append((name, wall, prm.usage.tokens, prm.usage.calls))

    # a head on a shallower layer: a different model (scores differ), timed on the same workload
    shallow = ValueHeadPRM(backbone=base, layer=args.layer)
    t = time.perf_counter()
    for cands in rounds:
        shallow.score(question, cands)
    shallow_row = (
        f"incr., batched, layer {args.layer}",
        time.perf_counter() - t,
        shallow.usage.tokens,
        shallow.usage.calls,
    )

    ref = results["full re-read, one by one"]
    worst = max(
        abs(a - b)
        for got in results.values()
        for ra, rb in zip(got, ref, strict=True)
        for ca, cb in zip(ra, rb, strict=True)
        for a, b in zip(ca, cb, strict=True)
    )
    slowest = rows[-1][1]
    print(f"\n{args.candidates} candidates x {args.steps} rounds (one step longer each round)")
    print(f"{'mode':<26}{'wall s':>9}{'tokens':>9}{'calls':>7}{'speed-up':>10}")
    for name, wall, tokens, calls in [*rows, shallow_row]:
        print(f"{name:<26}{wall:>9.2f}{tokens:>9}{calls:>7}{slowest / wall:>9.1f}x")
    print(f"max |score difference| across the first four modes: {worst:.2e}")
    if worst > 1e-4:
        raise SystemExit("modes disagree beyond 1e-4")


if __name__ == "__main__":
    main()
