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
from typing import Any

from ponder.config import RunConfig
from ponder.memory import MemoryStore
from ponder.memory.insights import InsightBook
from ponder.models.factory import make_policy
from ponder.paired import format_p, versus
from ponder.runner import run
from ponder.stats import format_rate, wilson_interval

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
    rows, episodes = {}, {}
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
        episodes[arm] = result.episodes
        rows[arm] = arm_row(result.episodes, levels, seconds=time.perf_counter() - t0)
        print(arm, json.dumps(rows[arm]), flush=True)

    table = table_text(rows, episodes)
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


def arm_row(eps: list[dict[str, Any]], levels: list[int], seconds: float) -> dict[str, Any]:
    """One arm's numbers: success overall, on each half of the stream and by level, each with
    its 95 % Wilson interval (``*_ci95``) and its counts (``counts``: ``[solved, tasks]``)."""
    eps = sorted(eps, key=lambda e: _order(e["task_id"], levels))
    half = len(eps) // 2
    by_level = defaultdict(list)
    for e in eps:
        by_level[e["task_id"].split("/")[1]].append(e)
    groups = {"success": eps, "first_half": eps[:half], "second_half": eps[half:]}
    counts = {g: _count(v) for g, v in groups.items()}
    level_counts = {lv: _count(v) for lv, v in sorted(by_level.items())}
    return {
        **{g: _rate(*c) for g, c in counts.items()},
        **{f"{g}_ci95": _ci(*c) for g, c in counts.items()},
        "by_level": {lv: _rate(*c) for lv, c in level_counts.items()},
        "by_level_ci95": {lv: _ci(*c) for lv, c in level_counts.items()},
        "counts": {**counts, **level_counts},
        "completion_tokens": sum(e["completion_tokens"] for e in eps),
        "seconds": round(seconds, 1),
    }


def table_text(rows: dict[str, dict[str, Any]], episodes: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: every success rate with its 95 % interval, and the exact McNemar test of each
    arm against ``off`` (else the first arm) on the tasks both ran."""
    base = "off" if "off" in rows else next(iter(rows))
    level_names = list(rows[next(iter(rows))]["by_level"])
    head = ["arm", "success", f"only arm / only {base}", "p (McNemar)", "first half", "second half"]
    head += [*level_names, "completion tokens", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, r in rows.items():
        c = r["counts"]
        if arm == base:
            test = ["baseline", ""]
        else:
            m = versus(episodes[arm], episodes[base])
            test = [f"{m.only_a} / {m.only_b}", format_p(m.p_value)]
        cells = [arm, format_rate(*c["success"]), *test]
        cells += [format_rate(*c[g]) for g in ("first_half", "second_half", *level_names)]
        cells += [str(r["completion_tokens"]), str(r["seconds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _count(eps: list[dict[str, Any]]) -> list[int]:
    return [sum(bool(e["success"]) for e in eps), len(eps)]


def _rate(k: int, n: int) -> float:
    return round(k / n, 4) if n else 0.0


def _ci(k: int, n: int) -> list[float]:
    return [round(x, 4) for x in wilson_interval(k, n)]


def _order(task_id: str, levels: list[int]) -> tuple[int, int]:
    _, lv, i = task_id.split("/")
    return int(i), levels.index(int(lv[1:]))


if __name__ == "__main__":
    main()
