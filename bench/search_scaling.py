"""Accuracy at matched generated-token budgets: majority, best-of-N, weighted best-of-N, beam, DVTS.

In the style of search-and-learn's plot, with the x-axis in generated tokens: every method on
the same held-out math tasks, the same policy and PRM, and greedy decoding (the same step
limit as the searches) as the reference. Every accuracy comes with its 95 % Wilson interval.

Matched budgets (``--budgets 100,200,400``): each method gets ``Budget(max_generated_tokens=B)``
per task, enforced per sample (``ponder.search.budget``: at most one sample past B).

* Majority, best-of-N and weighted best-of-N are read off ONE sample set per task (sample
  once, score many ways): ``--max-samples`` whole solutions are drawn once, and for each B the
  samples a per-sample budget check draws from that stream are used (each drawn while less
  than B was spent), scored with ``score_samples``. With a PRM that generates (``--prm
  judge``) its tokens count too, so then each B runs ``sample_and_score`` under the budget.
* Step-level methods (beam, DVTS, and any other name in ``ponder.search.ALGORITHMS``) run
  under the budget with each width in ``--ns``.

Without ``--budgets`` the older figure is made: accuracy per N (``--ns``), tokens as spent.

    .venv/bin/python bench/search_scaling.py --prm runs/prm --budgets 100,200,400 --ns 8 --tasks 10
    .venv/bin/python bench/search_scaling.py --prm verifier --tasks 20      # an ORACLE PRM
    .venv/bin/python bench/search_scaling.py --policy openai --base-url URL --model NAME --prm DIR

Held out: ``--exclude-labels FILE`` (repeatable) drops every task whose question a PRM label
file contains, so no test question was seen in training. Long runs can be split (e.g. one
process per method group) and merged afterwards with ``--combine A B --out C``, which only
re-summarises and re-plots. Results that used the gold answer inside the search (``--prm
verifier``, LATS' env reward) are marked "oracle".

Writes ``OUT/results.json``, ``OUT/results.md`` and ``OUT/accuracy_vs_tokens.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ponder.environments import make
from ponder.models.factory import make_policy, make_prm
from ponder.models.prm_train import load_labels
from ponder.models.types import SamplingParams
from ponder.search import ALGORITHMS
from ponder.search.best_of_n import SAMPLED_METHODS, sample_and_score, sample_solutions, score_samples
from ponder.search.budget import Budget
from ponder.search.prompts import problem_for_task
from ponder.stats import format_rate, wilson_interval

METHODS = ("majority", "best_of_n", "weighted_best_of_n", "beam", "dvts")
#: options that let a method spend its whole budget (the budget, not the option, stops it)
UNBOUNDED = {"mcts": {"iterations": 1000}, "lats": {"iterations": 1000}, "tot_dfs": {"max_expansions": 1000}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prm", default="verifier", help="PRM folder, judge, or verifier (an oracle)")
    ap.add_argument("--tasks", type=int, default=40, help="tasks per level")
    ap.add_argument("--levels", default="2,3")
    ap.add_argument("--seed", type=int, default=1, help="task seed (PRM training used seed 0 by default)")
    ap.add_argument("--ns", default="4,8,16", help="N per method (with --budgets: widths of step methods)")
    ap.add_argument("--budgets", default="", help="generated tokens per task, e.g. 100,200,400")
    ap.add_argument("--max-samples", type=int, default=32, help="samples drawn once per task (budget mode)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--beam-width", type=int, default=4)
    ap.add_argument("--step-tokens", type=int, default=48)
    ap.add_argument("--max-steps", type=int, default=6)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument(
        "--search-arg", action="append", default=[], help="METHOD.KEY=VALUE, e.g. mcts.selection=puct"
    )
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
    budgets = [int(x) for x in args.budgets.split(",") if x]
    ns = [int(x) for x in args.ns.split(",") if x]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in ALGORITHMS]
    if unknown:
        raise SystemExit(f"error: unknown method(s) {unknown}; use names from {sorted(ALGORITHMS)}")
    extra = search_args(args.search_arg)
    policy = make_policy(args.policy, model=args.model, base_url=args.base_url)
    prm = make_prm(args.prm, policy=policy)
    env = make("math", level=[int(x) for x in args.levels.split(",")], num_tasks=args.tasks, seed=args.seed)
    seen = {r["question"] for f in args.exclude_labels for r in load_labels(f)}
    task_ids = [t for t in env.task_ids() if env.task_text(env.reset(options={"task_id": t})[0]) not in seen]
    excluded = len(env.task_ids()) - len(task_ids)
    if excluded:
        print(f"{excluded} tasks skipped: their questions are in the PRM's training labels", flush=True)
    step = SamplingParams(max_tokens=args.step_tokens, temperature=args.temperature)

    def problem(tid: str, budget: int | None = None, params: SamplingParams = step) -> Any:
        p = problem_for_task(
            env,
            tid,
            policy,
            None,
            seed=args.seed,
            params=params,
            max_steps=args.max_steps,
            budget=Budget(max_generated_tokens=budget),
        )
        if args.prm == "verifier":
            from ponder.models.prm_oracle import VerifierPRM

            p.prm = VerifierPRM(p.evaluate)  # an oracle: results are marked
        else:
            p.prm = prm
            if hasattr(prm, "clear_cache"):  # each search pays for its own PRM reads
                prm.clear_cache()
        return p

    def row(tid: str, method: str, n: int | None, budget: int | None, result: Any, p: Any, **kw: Any) -> dict:
        ok, _ = p.evaluate(result.text) if result.text else (False, "")  # grading, after the search
        return {
            "task_id": tid,
            "method": method,
            "n": n,
            "budget": budget,
            "correct": bool(ok),
            "generated_tokens": result.budget["generated_tokens"],
            "judge_tokens": result.budget.get("judge_tokens", 0),
            "prm_tokens": result.budget["prm_tokens"],
            "oracle": bool(result.oracle),
            **kw,
        }

    # greedy reference: temperature 0, the same step limit and step length as the searches
    greedy_rows = []
    for tid in task_ids:
        p = problem(tid, params=dataclasses.replace(step, temperature=0))
        greedy_rows.append(row(tid, "greedy", 1, None, ALGORITHMS["majority"](p, n=1), p))
    k = sum(r["correct"] for r in greedy_rows)
    g_tok = sum(r["generated_tokens"] for r in greedy_rows) / len(greedy_rows)
    print(
        f"greedy: {format_rate(k, len(task_ids))} on {len(task_ids)} tasks, {g_tok:.0f} tokens/task",
        flush=True,
    )
    header = (
        f"math levels {args.levels}, {len(task_ids)} tasks (seed {args.seed}"
        + (f", {excluded} seen in PRM labels skipped" if excluded else "")
        + f"), PRM {args.prm}{' (ORACLE)' if args.prm == 'verifier' else ''}, T = {args.temperature}, "
        f"step <= {args.step_tokens} tokens, <= {args.max_steps} steps (greedy too)"
    )
    rows: list[dict[str, Any]] = list(greedy_rows)
    state = {"mode": "budget" if budgets else "n", "header": header, "rows": rows}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(state, indent=1))

    def report(label: str, got: list[dict[str, Any]], t0: float) -> None:
        k = sum(r["correct"] for r in got)
        tok = sum(r["generated_tokens"] for r in got) / len(got)
        print(
            f"{label:>34} {format_rate(k, len(got)):>22}  tokens/task {tok:6.0f}  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )

    sampled = [m for m in methods if m in SAMPLED_METHODS]
    stepped = [m for m in methods if m not in SAMPLED_METHODS]
    generates = bool(getattr(prm, "generates", False))
    if budgets:
        if sampled:
            t0 = time.perf_counter()
            got: dict[tuple[str, int], list] = defaultdict(list)
            for tid in task_ids:
                if generates:  # the judge's tokens count: run each budget for real
                    for b in budgets:
                        p = problem(tid, b)
                        for m, r in sample_and_score(p, args.max_samples, methods=sampled).items():
                            got[(m, b)].append(row(tid, m, None, b, r, p, samples=len(r.candidates)))
                    continue
                p = problem(tid)
                tree, leaves = sample_solutions(p, args.max_samples)
                tokens = [sum(tree[x]["tokens"] for x in tree.path(leaf)[1:]) for leaf in leaves]
                for b in budgets:
                    m_drawn = drawn_within(tokens, b)
                    if m_drawn == len(tokens) and sum(tokens) < b:
                        print(
                            f"warning: {tid}: {len(tokens)} samples did not spend {b} tokens; raise --max-samples"
                        )
                    if hasattr(p.prm, "clear_cache"):
                        p.prm.clear_cache()
                    p.oracle_sources.clear()  # each budget's results say only what they used
                    read = p.budget.prm_tokens
                    for m, r in score_samples(p, tree, leaves[:m_drawn], sampled).items():
                        r.budget = {
                            **r.budget,
                            "generated_tokens": sum(tokens[:m_drawn]),
                            "prm_tokens": 0 if m == "majority" else p.budget.prm_tokens - read,
                        }
                        got[(m, b)].append(row(tid, m, None, b, r, p, samples=m_drawn))
            for (m, b), rs in sorted(got.items(), key=lambda kv: (kv[0][1], methods.index(kv[0][0]))):
                rows.extend(rs)
                report(f"{m} B={b}", rs, t0)
            save()
        for b in budgets:
            for n in ns:
                for m in stepped:
                    t0 = time.perf_counter()
                    got_rows = []
                    for tid in task_ids:
                        p = problem(tid, b)
                        result = ALGORITHMS[m](p, n=n, **options(m, n, args.beam_width, extra))
                        got_rows.append(row(tid, m, n, b, result, p))
                    rows.extend(got_rows)
                    report(f"{m} N={n} B={b}", got_rows, t0)
                    save()
    else:
        for n in ns:
            if sampled:
                t0 = time.perf_counter()
                got = defaultdict(list)
                for tid in task_ids:
                    p = problem(tid)
                    for m, r in sample_and_score(p, n, methods=sampled).items():
                        got[m].append(row(tid, m, n, None, r, p))
                for m in sampled:
                    rows.extend(got[m])
                    report(f"{m} N={n}", got[m], t0)
            for m in stepped:
                t0 = time.perf_counter()
                got_rows = []
                for tid in task_ids:
                    p = problem(tid)
                    result = ALGORITHMS[m](p, n=n, **options(m, n, args.beam_width, extra, bounded=True))
                    got_rows.append(row(tid, m, n, None, result, p))
                rows.extend(got_rows)
                report(f"{m} N={n}", got_rows, t0)
            save()
    save()
    finish(state, out)


def search_args(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``METHOD.KEY=VALUE`` flags as ``{method: {key: value}}`` (numbers and booleans parsed)."""
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for pair in pairs:
        try:
            key, value = pair.split("=", 1)
            method, name = key.split(".", 1)
        except ValueError:
            raise SystemExit(f"error: --search-arg takes METHOD.KEY=VALUE, got {pair!r}") from None
        out[method][name] = (
            json.loads(value) if value.lower() in ("true", "false") or _number(value) else value
        )
    return out


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def options(
    method: str, n: int, beam_width: int, extra: dict[str, dict[str, Any]], *, bounded: bool = False
) -> dict[str, Any]:
    """The method's options: the beam width for beam/DVTS; under a budget, enough iterations
    that the budget, not the option, ends the search."""
    opts: dict[str, Any] = {"beam_width": min(beam_width, n)} if method in ("beam", "dvts") else {}
    if not bounded:
        opts |= UNBOUNDED.get(method, {})
    return opts | extra.get(method, {})


def drawn_within(tokens: Sequence[int], budget: int) -> int:
    """How many samples of a stream a per-sample budget check draws: each is drawn while less
    than ``budget`` has been spent (so at most one goes past it), as ``SearchProblem`` does.

    Example:
        >>> drawn_within([30, 30, 30, 30], 70), drawn_within([30, 30], 500), drawn_within([80, 10], 50)
        (3, 2, 1)
    """
    spent = drawn = 0
    for t in tokens:
        if spent >= budget:
            break
        spent += t
        drawn += 1
    return drawn


def combine(folders: list[Path], out: Path) -> None:
    """Merge the rows of several runs on the same tasks and settings (greedy once) and re-plot."""
    runs = [json.loads((d / "results.json").read_text()) for d in folders]
    if len({r.get("header") for r in runs}) != 1 or len({r.get("mode", "n") for r in runs}) != 1:
        raise SystemExit("error: these runs were not made on the same tasks with the same settings")
    rows = [row for i, r in enumerate(runs) for row in r["rows"] if i == 0 or row["method"] != "greedy"]
    state = {**runs[0], "rows": rows}
    (out / "results.json").write_text(json.dumps(state, indent=1))
    finish(state, out)


def finish(state: dict[str, Any], out: Path) -> None:
    table = summarize(state["rows"], state["header"], state.get("mode", "n"))
    (out / "results.md").write_text(table)
    plot(state["rows"], state.get("mode", "n"), out / "accuracy_vs_tokens.png")
    print(table)
    print(f"results: {out / 'results.md'}, plot: {out / 'accuracy_vs_tokens.png'}")


def _order(method: str) -> int:
    names = ["greedy", *METHODS]
    return names.index(method) if method in names else len(names)


def _cell(rs: list[dict[str, Any]]) -> str:
    k = sum(r["correct"] for r in rs)
    tok = sum(r["generated_tokens"] for r in rs) / len(rs)
    judge = sum(r.get("judge_tokens", 0) for r in rs) / len(rs)
    return f"{format_rate(k, len(rs))} · {tok:.0f} tok" + (f" ({judge:.0f} judge)" if judge else "")


def summarize(rows: list[dict[str, Any]], header: str, mode: str = "n") -> str:
    """A markdown table: accuracy [95 % CI] and mean generated tokens per task."""
    greedy = [r for r in rows if r["method"] == "greedy"]
    rest = [r for r in rows if r["method"] != "greedy"]
    lines = [header, ""]
    if greedy:
        lines += [f"greedy (one sample, T = 0): {_cell(greedy)}", ""]
    if mode == "budget":
        budgets = sorted({r["budget"] for r in rest})
        agg: dict[tuple[str, Any], dict[int, list]] = defaultdict(lambda: defaultdict(list))
        for r in rest:
            agg[(r["method"], r["n"])][r["budget"]].append(r)
        lines += [
            "| method | N | " + " | ".join(f"B = {b} tokens" for b in budgets) + " |",
            "|---|---|" + "---|" * len(budgets),
        ]
        for (method, n), per_b in sorted(agg.items(), key=lambda kv: (_order(kv[0][0]), kv[0][1] or 0)):
            name = method + (" (ORACLE)" if any(r["oracle"] for rs in per_b.values() for r in rs) else "")
            cells = [_cell(per_b[b]) if per_b.get(b) else "" for b in budgets]
            lines.append(f"| {name} | {n or 'as B allows'} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Cells: accuracy [95 % Wilson interval] · mean generated tokens per task (judge tokens included).",
        ]
        return "\n".join(lines) + "\n"
    agg2: dict[tuple[str, int], list] = defaultdict(list)
    for r in rest:
        agg2[(r["method"], r["n"])].append(r)
    lines += [
        "| method | N | accuracy [95 % CI] | generated tokens / task | PRM tokens / task |",
        "|---|---|---|---|---|",
    ]
    for (method, n), rs in sorted(agg2.items(), key=lambda kv: (kv[0][1], _order(kv[0][0]))):
        k = len(rs)
        name = method + (" (ORACLE)" if any(r["oracle"] for r in rs) else "")
        lines.append(
            f"| {name} | {n} | {format_rate(sum(r['correct'] for r in rs), k)} | "
            f"{sum(r['generated_tokens'] for r in rs) / k:.0f} | {sum(r['prm_tokens'] for r in rs) / k:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], mode: str, path: Path) -> None:
    """Accuracy (with 95 % intervals) against mean generated tokens per task; greedy as a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.4))
    key = "budget" if mode == "budget" else "n"
    lines: dict[tuple[str, Any], dict[Any, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["method"] != "greedy":
            lines[(r["method"], r["n"] if mode == "budget" else None)][r[key]].append(r)
    for (method, n), per in sorted(lines.items(), key=lambda kv: (_order(kv[0][0]), kv[0][1] or 0)):
        pts = []
        for x, rs in sorted(per.items()):
            k = sum(r["correct"] for r in rs)
            lo, hi = wilson_interval(k, len(rs))
            pts.append((sum(r["generated_tokens"] for r in rs) / len(rs), k / len(rs), lo, hi, x))
        label = (
            method
            + (f" N={n}" if n else "")
            + (" (oracle)" if any(r["oracle"] for rs in per.values() for r in rs) else "")
        )
        ys = [100 * p[1] for p in pts]
        err = [[100 * (p[1] - p[2]) for p in pts], [100 * (p[3] - p[1]) for p in pts]]
        ax.errorbar([p[0] for p in pts], ys, yerr=err, marker="o", capsize=3, label=label, alpha=0.85)
        for p in pts:
            ax.annotate(
                f"{'B' if mode == 'budget' else 'N'}={p[4]}",
                (p[0], 100 * p[1]),
                fontsize=6,
                xytext=(2, 2),
                textcoords="offset points",
            )
    greedy = [r for r in rows if r["method"] == "greedy"]
    if greedy:
        k = sum(r["correct"] for r in greedy)
        lo, hi = wilson_interval(k, len(greedy))
        x = sum(r["generated_tokens"] for r in greedy) / len(greedy)
        y = 100 * k / len(greedy)
        ax.errorbar(
            [x],
            [y],
            yerr=[[y - 100 * lo], [100 * hi - y]],
            marker="s",
            color="grey",
            capsize=3,
            label="greedy",
        )
        ax.axhline(y, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per task (policy + judge)")
    ax.set_ylabel("accuracy (%), 95 % interval")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
