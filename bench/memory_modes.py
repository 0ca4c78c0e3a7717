"""Memory on a stream of tasks: off vs experiential vs reflective vs all three modes.

One trial per task, tasks in a fixed order (every level interleaved), the same seeds for
every arm, each arm with its own fresh memory. Prints success rates (overall, by level,
and on the first vs second half of the stream, where memory has had time to fill) and
the insight set the concept mode ended with.

    .venv/bin/python bench/memory_modes.py                       # 200 tasks, SmolLM2 on this CPU
    .venv/bin/python bench/memory_modes.py --tasks 40 --arms off,all
    .venv/bin/python bench/memory_modes.py --policy openai --base-url http://127.0.0.1:8000/v1 --model NAME
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import defaultdict
from pathlib import Path

from ponder.config import RunConfig
from ponder.memory import MemoryStore
from ponder.memory.insights import InsightBook
from ponder.models.factory import make_policy
from ponder.runner import run

ARMS = {
    "off": (),
    "experiential": ("experiential",),
    "reflective": ("reflective",),
    "all": ("experiential", "reflective", "concept"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--levels", default="1,2,3,4,5")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench-memory-modes")
    ap.add_argument("--policy", default="local")
    ap.add_argument("--model")
    ap.add_argument("--base-url")
    args = ap.parse_args()

    out = Path(args.out)
    levels = [int(x) for x in args.levels.split(",")]
    policy = make_policy(args.policy, model=args.model, base_url=args.base_url)
    rows = {}
    for arm in args.arms.split(","):
        shutil.rmtree(out / arm, ignore_errors=True)
        cfg = RunConfig(
            agent="reflexion",
            env="math",
            env_kwargs={"level": levels},
            tasks=args.tasks,
            trials=1,
            concurrency=1,
            seed=args.seed,
            policy=args.policy,
            model=args.model,
            base_url=args.base_url,
            name=arm,
            runs_dir=str(out),
            memory=str(out / arm / "memory"),
            memory_modes=ARMS[arm],
        )
        t0 = time.perf_counter()
        result = run(cfg, policy=policy, progress=True)
        eps = sorted(result.episodes, key=lambda e: _order(e["task_id"], levels))
        half = len(eps) // 2
        by_level = defaultdict(list)
        for e in eps:
            by_level[e["task_id"].split("/")[1]].append(e["success"])
        rows[arm] = {
            "success": _rate([e["success"] for e in eps]),
            "first_half": _rate([e["success"] for e in eps[:half]]),
            "second_half": _rate([e["success"] for e in eps[half:]]),
            "by_level": {lv: _rate(v) for lv, v in sorted(by_level.items())},
            "completion_tokens": sum(e["completion_tokens"] for e in eps),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(arm, json.dumps(rows[arm]), flush=True)

    lines = [
        "| arm | success | first half | second half | "
        + " | ".join(rows[next(iter(rows))]["by_level"])
        + " | completion tokens | seconds |"
    ]
    lines.append("|" + "---|" * (6 + len(levels)))
    for arm, r in rows.items():
        lv = " | ".join(f"{v:.0%}" for v in r["by_level"].values())
        lines.append(
            f"| {arm} | {r['success']:.1%} | {r['first_half']:.1%} | {r['second_half']:.1%} | {lv} | "
            f"{r['completion_tokens']} | {r['seconds']} |"
        )
    table = "\n".join(lines)
    insights = ""
    if "all" in rows:
        with MemoryStore.open(out / "all" / "memory", mode="r") as store:
            book = InsightBook(store)
            active = book.active()
            retired = [i for i in store.list(kind="insight") if i.status == "retired"]
            insights = "\n".join(
                f"{n}. ({i.upvotes}+/{i.downvotes}-) {i.text}" for n, i in enumerate(active, 1)
            )
            insights += f"\n({len(active)} active, {len(retired)} retired)"
    report = f"{table}\n\nInsights after the 'all' arm:\n{insights}\n"
    (out / "results.md").write_text(report)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print(report)


def _rate(xs: list[bool]) -> float:
    return round(sum(xs) / len(xs), 4) if xs else 0.0


def _order(task_id: str, levels: list[int]) -> tuple[int, int]:
    _, lv, i = task_id.split("/")
    return int(i), levels.index(int(lv[1:]))


if __name__ == "__main__":
    main()
