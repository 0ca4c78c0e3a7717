"""The report of ``ponder improve``: one row per iteration, and the metrics against the iteration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["RATES", "row", "spent_by_stage", "write_report"]

STAGES = ("collect", "data", "train", "prm", "evaluate")
#: report columns that are success rates (besides the ``method@n`` ones)
RATES = ("greedy", "transfer_greedy")


def row(k: int, metrics: dict[str, Any], spent: dict[str, Any]) -> dict[str, Any]:
    """One row of the report: the headline numbers of iteration ``k``."""
    held, row = metrics.get("heldout", {}), {"iteration": k, **spent}
    row["greedy"] = held.get("greedy", {}).get("rate")
    row["transfer_greedy"] = metrics.get("transfer", {}).get("greedy", {}).get("rate")
    for name, r in held.get("samples", {}).items():
        if isinstance(r, dict):
            row[name] = r["rate"]
    for agent, r in held.get("agents", {}).items():
        row[f"{agent}@{len(r['by_trial'])}"] = r["by_trial"][-1]["rate"]
    row["eval_tokens"] = sum(
        part.get("greedy", {}).get("completion_tokens", 0)
        + part.get("samples", {}).get("generated_tokens", 0)
        + sum(a["completion_tokens"] for a in part.get("agents", {}).values())
        for name, part in metrics.items()
        if name in ("heldout", "transfer")
    )
    return row


def spent_by_stage(iter_dir: Path) -> dict[str, Any]:
    """Seconds per stage and the tokens of iteration ``iter_dir``, from its stage files."""
    spent = {
        s: json.loads((iter_dir / f"{s}.json").read_text())
        for s in STAGES
        if (iter_dir / f"{s}.json").exists()
    }
    return {f"{s}_s": v.get("seconds") for s, v in spent.items()} | {
        "examples": (spent.get("data") or {}).get("examples"),
        "generated_tokens": (spent.get("collect") or {}).get("generated_tokens"),
        "tokens_read": (spent.get("train") or {}).get("tokens_read"),
        "tokens_trained": (spent.get("train") or {}).get("tokens_trained"),
        "prm_auc": round(auc, 3) if isinstance(auc := (spent.get("prm") or {}).get("auc"), float) else None,
    }


def write_report(cfg: Any, rows: list[dict[str, Any]]) -> Path:
    """``report.md`` (one row per iteration) and ``improve.png`` (metrics against the iteration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(k for r in rows for k in r if k != "iteration"))
    lines = ["| iteration | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for r in rows:
        lines.append(f"| {r['iteration']} | " + " | ".join(_cell(k, r.get(k)) for k in keys) + " |")
    where = (
        f"Held-out task seed {cfg.eval.seed}; training seeds {cfg.train_seed(1)}..{cfg.train_seed(cfg.iterations)}."
        if getattr(cfg, "env", "math") == "math"
        else f"Env {cfg.env} {cfg.env_kwargs}: collected on its subset=train rows, evaluated on subset=test."
    )
    text = f"# ponder improve: {cfg.name}\n\n{where}\n\n" + "\n".join(lines) + "\n"
    out = cfg.run_dir / "report.md"
    out.write_text(text)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k in [k for k in keys if k in RATES or "@" in k]:
        points = [(r["iteration"], 100 * r[k]) for r in rows if isinstance(r.get(k), float)]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=k)
    ax.set_xticks(sorted({r["iteration"] for r in rows}))
    ax.set_xlabel("iteration")
    ax.set_ylabel("held-out success (%)")
    ax.set_title(f"ponder improve: {cfg.name}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(cfg.run_dir / "improve.png", dpi=120)
    plt.close(fig)
    return out


def _cell(key: str, v: Any) -> str:
    if v is None:
        return ""
    if key.endswith("_s"):
        return f"{float(v):.0f} s"
    if key in RATES or "@" in key:
        return f"{100 * float(v):.1f}%"
    return f"{v:,}" if isinstance(v, int) else str(v)
