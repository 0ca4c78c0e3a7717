"""Accuracy against generated tokens: majority, best-of-N, weighted best-of-N, beam, DVTS at several N.

In the style of search-and-learn's plot: every method on the same math tasks, the same
policy and PRM, N = 4, 8, 16; the x-axis is the generated tokens a method spent per task,
so methods are compared at equal compute. Greedy decoding is the reference point.

    .venv/bin/python bench/search_scaling.py --prm runs/prm                 # a trained PRM
    .venv/bin/python bench/search_scaling.py --prm verifier --tasks 20      # oracle PRM
    .venv/bin/python bench/search_scaling.py --policy openai --base-url URL --model NAME --prm DIR

Held out: ``--exclude-labels FILE`` (repeatable) drops every task whose question a PRM label
file contains, so no test question was seen in training. Long runs can be split (e.g. one
process per N, ``--ns 16 --out A`` and ``--ns 4,8 --out B``) and merged afterwards with
``--combine A B --out C``, which only re-summarises and re-plots.

Writes ``OUT/results.json``, ``OUT/results.md`` and ``OUT/accuracy_vs_tokens.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from ponder.environments import make
from ponder.models.factory import make_policy, make_prm
from ponder.models.prm_train import load_labels
from ponder.models.types import SamplingParams
from ponder.search import ALGORITHMS
from ponder.search.prompts import problem_for_task

METHODS = ("majority", "best_of_n", "weighted_best_of_n", "beam", "dvts")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prm", default="verifier", help="PRM folder, verifier or judge")
    ap.add_argument("--tasks", type=int, default=40, help="tasks per level")
    ap.add_argument("--levels", default="2,3")
    ap.add_argument("--seed", type=int, default=1, help="task seed (PRM training used seed 0 by default)")
    ap.add_argument("--ns", default="4,8,16")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--beam-width", type=int, default=4)
    ap.add_argument("--step-tokens", type=int, default=48)
    ap.add_argument("--max-steps", type=int, default=6)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--out", default="runs/bench-search-scaling")
    ap.add_argument("--policy", default="local")
    ap.add_argument("--model")
    ap.add_argument("--base-url")
    ap.add_argument(
        "--exclude-labels", action="append", default=[], help="label file whose questions to skip"
    )
    ap.add_argument("--combine", nargs="+", help="merge these result folders into --out and stop")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.combine:
        combine([Path(d) for d in args.combine], out)
        return
    policy = make_policy(args.policy, model=args.model, base_url=args.base_url)
    prm = make_prm(args.prm, policy=policy)
    env = make("math", level=[int(x) for x in args.levels.split(",")], num_tasks=args.tasks, seed=args.seed)
    seen = {r["question"] for f in args.exclude_labels for r in load_labels(f)}
    task_ids = [t for t in env.task_ids() if env.task_text(env.reset(options={"task_id": t})[0]) not in seen]
    excluded = len(env.task_ids()) - len(task_ids)
    if excluded:
        print(f"{excluded} tasks skipped: their questions are in the PRM's training labels", flush=True)
    step = SamplingParams(max_tokens=args.step_tokens, temperature=args.temperature)
    rows: list[dict[str, Any]] = []

    def solve(tid: str, method: str, n: int) -> dict[str, Any]:
        problem = problem_for_task(
            env, tid, policy, None, seed=args.seed, params=step, max_steps=args.max_steps
        )
        if args.prm == "verifier":
            from ponder.models.prm_oracle import VerifierPRM

            problem.prm = VerifierPRM(problem.evaluate)
        else:
            problem.prm = prm
            if hasattr(prm, "clear_cache"):  # each search pays for its own PRM reads
                prm.clear_cache()
        opts = {"beam_width": min(args.beam_width, n)} if method in ("beam", "dvts") else {}
        t0 = time.perf_counter()
        result = ALGORITHMS[method](problem, n=n, **opts)
        ok, _ = problem.evaluate(result.text) if result.text else (False, "")
        return {
            "task_id": tid,
            "method": method,
            "n": n,
            "correct": ok,
            "generated_tokens": result.budget["generated_tokens"],
            "prm_tokens": result.budget["prm_tokens"],
            "seconds": round(time.perf_counter() - t0, 2),
        }

    # greedy reference: one sample at temperature 0
    greedy = []
    for tid in task_ids:
        problem = problem_for_task(
            env,
            tid,
            policy,
            None,
            seed=args.seed,
            params=SamplingParams(max_tokens=args.step_tokens, temperature=0),
        )
        result = ALGORITHMS["majority"](problem, n=1)
        greedy.append(problem.evaluate(result.text)[0] if result.text else False)
    g_acc = sum(greedy) / len(greedy)
    print(f"greedy: {g_acc:.1%} on {len(task_ids)} tasks", flush=True)
    header = (
        f"math levels {args.levels}, {len(task_ids)} tasks (seed {args.seed}"
        + (f", {excluded} seen in PRM labels skipped" if excluded else "")
        + f"), PRM {args.prm}; greedy {g_acc:.1%}"
    )

    for n in [int(x) for x in args.ns.split(",")]:
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            got = [solve(tid, method, n) for tid in task_ids]
            rows += got
            acc = sum(r["correct"] for r in got) / len(got)
            tok = sum(r["generated_tokens"] for r in got) / len(got)
            print(
                f"{method:>20} N={n:<3} accuracy {acc:6.1%}  tokens/task {tok:7.0f}  ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            (out / "results.json").write_text(
                json.dumps({"greedy": g_acc, "header": header, "rows": rows}, indent=1)
            )

    table = summarize(rows, g_acc, header)
    (out / "results.md").write_text(table)
    plot(rows, g_acc, out / "accuracy_vs_tokens.png")
    print(table)
    print(f"results: {out / 'results.md'}, plot: {out / 'accuracy_vs_tokens.png'}")


def combine(folders: list[Path], out: Path) -> None:
    """Merge the rows of several runs on the same tasks (e.g. one per N) and re-plot."""
    runs = [json.loads((d / "results.json").read_text()) for d in folders]
    if len({r["greedy"] for r in runs}) != 1 or len({r.get("header") for r in runs}) != 1:
        raise SystemExit("error: these runs were not made on the same tasks with the same settings")
    rows = [row for r in runs for row in r["rows"]]
    (out / "results.json").write_text(json.dumps({**runs[0], "rows": rows}, indent=1))
    table = summarize(rows, runs[0]["greedy"], runs[0].get("header", ""))
    (out / "results.md").write_text(table)
    plot(rows, runs[0]["greedy"], out / "accuracy_vs_tokens.png")
    print(table)
    print(f"results: {out / 'results.md'}, plot: {out / 'accuracy_vs_tokens.png'}")


def summarize(rows: list[dict[str, Any]], greedy: float, header: str) -> str:
    agg: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        agg[(r["method"], r["n"])].append(r)
    lines = [
        header,
        "",
        "| method | N | accuracy | generated tokens / task | PRM tokens / task | seconds / task |",
        "|---|---|---|---|---|---|",
    ]
    for (method, n), rs in sorted(
        agg.items(), key=lambda kv: (kv[0][1], METHODS.index(kv[0][0]) if kv[0][0] in METHODS else 99)
    ):
        k = len(rs)
        lines.append(
            f"| {method} | {n} | {sum(r['correct'] for r in rs) / k:.1%} | "
            f"{sum(r['generated_tokens'] for r in rs) / k:.0f} | {sum(r['prm_tokens'] for r in rs) / k:.0f} | "
            f"{sum(r['seconds'] for r in rs) / k:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], greedy: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    by_method: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_method[r["method"]][r["n"]].append(r)
    for method, per_n in by_method.items():
        pts = sorted(
            (sum(r["generated_tokens"] for r in rs) / len(rs), sum(r["correct"] for r in rs) / len(rs), n)
            for n, rs in per_n.items()
        )
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=method)
        for x, y, n in pts:
            ax.annotate(f"N={n}", (x, 100 * y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.axhline(100 * greedy, color="grey", linestyle="--", label="greedy")
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per task")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
