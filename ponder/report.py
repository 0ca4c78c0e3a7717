"""Reports of finished runs: summary numbers, ``report.md`` and the success-by-trial plot.

Success by trial ``k`` is the share of tasks solved within the first ``k`` trials (the
curve the Reflexion paper plots). ``compare_runs`` puts several runs on one plot and
one table, with the tasks each run solved that the other did not.

Example:
    >>> eps = [{"task_id": "a", "success": True, "first_success_trial": 1, "trials_used": 2,
    ...         "prompt_tokens": 10, "completion_tokens": 5, "seconds": 1.0, "trials": []}]
    >>> summarize(eps, max_trials=3)["success_by_trial"]
    [0.0, 1.0, 1.0]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ponder.episodes import read_episodes
from ponder.errors import ConfigError

__all__ = ["compare_runs", "load_run", "plot_embodied", "plot_success", "summarize", "write_report"]


def summarize(episodes: Sequence[dict[str, Any]], max_trials: int | None = None) -> dict[str, Any]:
    """Numbers that describe a run: success by trial, tokens, time."""
    n = len(episodes)
    k_max = max_trials or max((e.get("trials_used", 0) for e in episodes), default=0)
    by_trial = []
    for k in range(1, k_max + 1):
        solved = sum(
            1 for e in episodes if e.get("first_success_trial") is not None and e["first_success_trial"] < k
        )
        by_trial.append(round(solved / n, 4) if n else 0.0)
    completion = sum(e.get("completion_tokens", 0) for e in episodes)
    return {
        **_embodied(episodes, k_max),
        "episodes": n,
        "success_rate": round(sum(bool(e.get("success")) for e in episodes) / n, 4) if n else 0.0,
        "success_by_trial": by_trial,
        "mean_trials_used": round(sum(e.get("trials_used", 0) for e in episodes) / n, 3) if n else 0.0,
        "prompt_tokens": sum(e.get("prompt_tokens", 0) for e in episodes),
        "completion_tokens": completion,
        "completion_tokens_per_episode": round(completion / n, 1) if n else 0.0,
        "episode_seconds": round(sum(e.get("seconds", 0.0) for e in episodes), 2),
    }


def _embodied(episodes: Sequence[dict[str, Any]], k_max: int) -> dict[str, Any]:
    """Multi-step episodes (trials with ``steps``): mean best score within k trials, steps to success."""
    if not any("steps" in t for e in episodes for t in e.get("trials", [])):
        return {}
    best = []
    for k in range(1, k_max + 1):
        per = [max((t["score"] for t in e.get("trials", [])[:k]), default=0.0) for e in episodes]
        best.append(round(sum(per) / len(per), 2) if per else 0.0)
    to_success = [
        t["steps_taken"]
        for e in episodes
        for t in e.get("trials", [])
        if t.get("success") and "steps_taken" in t
    ]
    return {
        "score_by_trial": best,
        "steps_to_success": to_success,
        "mean_steps_to_success": round(sum(to_success) / len(to_success), 2) if to_success else None,
    }


def plot_embodied(runs: dict[str, dict[str, Any]], path: Path) -> Path:
    """Two panels: mean best score (0-100) within k trials, and the steps successful trials took."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    for label, s in runs.items():
        ys = s.get("score_by_trial", [])
        a.plot(range(1, len(ys) + 1), ys, marker="o", label=label)
    a.set_xlabel("trial")
    a.set_ylabel("mean best score so far (0-100)")
    a.set_ylim(-2, 102)
    a.grid(alpha=0.3)
    a.legend(fontsize=7)
    data = [s.get("steps_to_success") or [] for s in runs.values()]
    if any(data):
        b.hist(data, label=list(runs), bins=10)
        b.legend(fontsize=7)
    b.set_xlabel("steps to success")
    b.set_ylabel("successful trials")
    b.set_title("steps to success" if any(data) else "no successful trial")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_success(
    curves: dict[str, Sequence[float]], path: Path, title: str = "Success rate by trial"
) -> Path:
    """One line per run: x = trial, y = share of tasks solved by then."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for label, ys in curves.items():
        ax.plot(range(1, len(ys) + 1), [100 * y for y in ys], marker="o", label=label)
    ax.set_xlabel("trial")
    ax.set_ylabel("tasks solved (%)")
    ax.set_title(title)
    ax.set_ylim(-2, 102)
    ax.set_xticks(range(1, max((len(v) for v in curves.values()), default=1) + 1))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _table(rows: dict[str, dict[str, Any]]) -> str:
    k = max((len(s["success_by_trial"]) for s in rows.values()), default=0)
    head = (
        "| run | tasks | "
        + " | ".join(f"trial {i}" for i in range(1, k + 1))
        + " | completion tokens | seconds |"
    )
    sep = "|" + "---|" * (k + 4)
    lines = [head, sep]
    for name, s in rows.items():
        cells = " | ".join(f"{100 * v:.0f}%" for v in s["success_by_trial"])
        lines.append(
            f"| {name} | {s['episodes']} | {cells} | {s['completion_tokens']} | {s['episode_seconds']} |"
        )
    return "\n".join(lines)


def write_report(
    run_dir: Path, episodes: Sequence[dict[str, Any]], config: dict[str, Any]
) -> tuple[dict, Path, Path | None]:
    """Write ``summary.json``, ``report.md`` and ``success_by_trial.png`` for one run."""
    summary = summarize(episodes, config.get("trials"))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    name = config.get("name") or run_dir.name
    plot = (
        plot_success({name: summary["success_by_trial"]}, run_dir / "success_by_trial.png")
        if episodes
        else None
    )
    lines = [
        f"# Run {name}",
        "",
        f"agent `{config.get('agent')}` on env `{config.get('env')}` {config.get('env_kwargs') or ''}, "
        f"{summary['episodes']} tasks, {config.get('trials')} trials, seed {config.get('seed')}, "
        f"policy `{config.get('policy')}` {config.get('model') or ''}",
        "",
        "## Success by trial (tasks solved within k trials)",
        "",
        _table({name: summary}),
        "",
    ]
    if "score_by_trial" in summary:
        plot_embodied({name: summary}, run_dir / "score_by_trial.png")
        scores = "  ".join(f"{v:.0f}" for v in summary["score_by_trial"])
        lines += [
            "## Score by trial (mean best score within k trials, 0-100)",
            "",
            scores,
            "",
            f"Steps to success: mean {summary['mean_steps_to_success']} over "
            f"{len(summary['steps_to_success'])} successful trials. Plot: score_by_trial.png",
            "",
        ]
    reflections = [
        (e["task_id"], t["reflection"]) for e in episodes for t in e.get("trials", []) if t.get("reflection")
    ]
    if reflections:
        lines += (
            ["## Sample reflections", ""] + [f"- `{tid}`: {text}" for tid, text in reflections[:5]] + [""]
        )
    report = run_dir / "report.md"
    report.write_text("\n".join(lines))
    return summary, report, plot


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The config and episodes of a run directory."""
    import yaml

    d = Path(run_dir)
    if not (d / "config.yaml").exists():
        raise ConfigError(
            f"{d} is not a run directory (no config.yaml); pass a directory made by 'ponder run'"
        )
    config = yaml.safe_load((d / "config.yaml").read_text())
    return config, read_episodes(d / "episodes.jsonl")


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path) -> tuple[dict[str, dict], Path, Path]:
    """Compare runs on the same tasks: one table, one plot, and the tasks each solved alone."""
    if len(run_dirs) < 1:
        raise ConfigError("compare needs at least one run directory")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict] = {}
    solved: dict[str, set[str]] = {}
    for d in run_dirs:
        config, eps = load_run(d)
        label = Path(d).name
        summaries[label] = summarize(eps, config.get("trials"))
        solved[label] = {e["task_id"] for e in eps if e.get("success")}
    plot = plot_success(
        {k: v["success_by_trial"] for k, v in summaries.items()}, out / "success_by_trial.png"
    )
    lines = ["# Comparison", "", _table(summaries), ""]
    if all("score_by_trial" in v for v in summaries.values()):
        plot_embodied(summaries, out / "score_by_trial.png")
        lines += ["| run | score by trial (0-100) | mean steps to success |", "|---|---|---|"]
        lines += [
            f"| {k} | {' / '.join(f'{x:.0f}' for x in v['score_by_trial'])} | {v['mean_steps_to_success']} |"
            for k, v in summaries.items()
        ]
        lines.append("")
    names = list(summaries)
    for a in names:
        for b in names:
            if a != b:
                only = sorted(solved[a] - solved[b])
                lines.append(
                    f"- solved by {a} but not {b}: {len(only)}"
                    + (f" ({', '.join(only[:8])})" if only else "")
                )
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summaries, indent=2))
    return summaries, report, plot
