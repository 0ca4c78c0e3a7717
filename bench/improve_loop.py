"""The experiment of ``ponder improve``: run the loop (or read a finished one) and print, per
iteration, the held-out metrics with their 95 % intervals and what the iteration cost.

    .venv/bin/python bench/improve_loop.py --name improve-default            # run (or resume) at the default size
    .venv/bin/python bench/improve_loop.py --name improve-default --read     # only print a finished run

Targets it reports against (held-out tasks, task seed 1; word-problem transfer set):
greedy +25 points over the base model; reflexion and retry-feedback >= retry + 5 at trial 3;
PRM-weighted best-of-8 >= majority@8 + 5 (same samples, so the same tokens); one iteration < 30 min.
Run it in the background (``nohup ... > runs/improve.log 2>&1 &``): ~1.5 hours at the default size
on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import sys

from ponder.training.improve import ImproveConfig, improve, rows_on_disk


def _pct(r: dict | None) -> str:
    if not r:
        return "-"
    lo, hi = r["ci95"]
    return f"{100 * r['rate']:.1f} [{100 * lo:.0f}-{100 * hi:.0f}]"


def table(cfg: ImproveConfig) -> list[str]:
    lines = [
        "| iter | greedy | transfer greedy | majority@8 | best-of-8 | PRM-weighted@8 | reflexion@3 | retry-feedback@3 | retry@3 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    costs = [
        "| iter | collect | data | train | prm | evaluate | iteration | examples | generated (collect) | read by training | trained on | eval tokens | PRM AUC |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows_on_disk(cfg):
        k = r["iteration"]
        m = json.loads((cfg.run_dir / f"iter-{k}" / "eval" / "metrics.json").read_text())
        held, trans = m["heldout"], m.get("transfer", {})
        s, a = held.get("samples", {}), held.get("agents", {})
        n = cfg.eval.samples
        agents = [
            _pct((a.get(x) or {}).get("by_trial", [None])[-1])
            for x in ("reflexion", "retry-feedback", "retry")
        ]
        lines.append(
            f"| {k} | {_pct(held['greedy'])} | {_pct(trans.get('greedy'))} | {_pct(s.get(f'majority@{n}'))} | "
            f"{_pct(s.get(f'best_of_n@{n}'))} | {_pct(s.get(f'weighted_best_of_n@{n}'))} | "
            + " | ".join(agents)
            + " |"
        )
        secs = [r.get(f"{x}_s") for x in ("collect", "data", "train", "prm", "evaluate")]
        total = sum(x for x in secs if x)
        fmt = [f"{x / 60:.1f} min" if x else "-" for x in secs]
        costs.append(
            f"| {k} | " + " | ".join(fmt) + f" | {total / 60:.1f} min | {r.get('examples') or '-'} | "
            f"{r.get('generated_tokens') or '-'} | {r.get('tokens_read') or '-'} | {r.get('tokens_trained') or '-'} | "
            f"{r.get('eval_tokens') or '-'} | {r.get('prm_auc') or '-'} |"
        )
    return [*lines, "", *costs]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="improve-default")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--read", action="store_true", help="print a finished (or partial) run; run nothing")
    a = p.parse_args()
    cfg = ImproveConfig(name=a.name, runs_dir=a.runs_dir, iterations=a.iterations)
    saved = cfg.run_dir / "improve.yaml"
    if saved.exists():
        import yaml

        cfg = ImproveConfig.from_dict({**yaml.safe_load(saved.read_text()), "runs_dir": a.runs_dir})
    if not a.read:
        improve(cfg, resume=saved.exists())
    print("\n".join(table(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
