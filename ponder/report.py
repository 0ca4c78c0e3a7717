"""Reports of finished runs: summary numbers, ``report.md`` and the success-by-trial plot.

Success by trial ``k`` is the share of tasks solved within the first ``k`` trials (the
curve the Reflexion paper plots). Every success rate comes with its 95 % Wilson interval
(``ponder.stats``): on 20 tasks it spans about 40 points. ``compare_runs`` puts several runs
on one plot and one table and tests each pair on the tasks both ran (``ponder.paired``).
A run that reads the gold answers (an oracle verifier) is tagged ``ORACLE`` everywhere.

Example:
    >>> eps = [{"task_id": "a", "success": True, "first_success_trial": 1, "trials_used": 2,
    ...         "prompt_tokens": 10, "completion_tokens": 5, "seconds": 1.0, "trials": []}]
    >>> s = summarize(eps, max_trials=3)
    >>> s["success_by_trial"], s["success_ci95"]
    ([0.0, 1.0, 1.0], [0.2065, 1.0])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ponder.episodes import read_episodes
from ponder.errors import ConfigError, PonderError
from ponder.paired import paired_section, solved_by
from ponder.plots import plot_embodied, plot_success
from ponder.stats import format_rate, wilson_interval

__all__ = [
    "ORACLE",
    "compare_runs",
    "is_oracle",
    "load_run",
    "plot_embodied",
    "plot_success",
    "summarize",
    "write_report",
]

ORACLE = "ORACLE (reads gold answers)"


def summarize(episodes: Sequence[dict[str, Any]], max_trials: int | None = None) -> dict[str, Any]:
    """Numbers that describe a run: success (with 95 % Wilson intervals) by trial, tokens, time.

    ``oracle`` is true when an episode's search read the gold answers.
    """
    n = len(episodes)
    k_max = max_trials or max((e.get("trials_used", 0) for e in episodes), default=0)
    solved = [sum(solved_by(e, k) for e in episodes) for k in range(1, k_max + 1)]
    wins = sum(solved_by(e) for e in episodes)
    completion = sum(e.get("completion_tokens", 0) for e in episodes)
    return {
        **_embodied(episodes, k_max),
        "episodes": n,
        "successes": wins,
        "success_rate": round(wins / n, 4) if n else 0.0,
        "success_ci95": _ci(wins, n),
        "solved_by_trial": solved,
        "success_by_trial": [round(k / n, 4) if n else 0.0 for k in solved],
        "success_by_trial_ci95": [_ci(k, n) for k in solved],
        "mean_trials_used": round(sum(e.get("trials_used", 0) for e in episodes) / n, 3) if n else 0.0,
        "prompt_tokens": sum(e.get("prompt_tokens", 0) for e in episodes),
        "completion_tokens": completion,
        "completion_tokens_per_episode": round(completion / n, 1) if n else 0.0,
        "episode_seconds": round(sum(e.get("seconds", 0.0) for e in episodes), 2),
        "oracle": any(_oracle_episode(e) for e in episodes),
        **_internal(episodes),
    }


def _internal(episodes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """With hidden tests: how often the agent's own signal (the visible tests) said success."""
    if not any("internal_success" in e for e in episodes):
        return {}
    k = sum(bool(e.get("internal_success")) for e in episodes)
    return {
        "internal_success_rate": round(k / len(episodes), 4),
        "internal_success_ci95": _ci(k, len(episodes)),
    }


def _oracle_episode(e: dict[str, Any]) -> bool:
    return bool(e.get("oracle")) or any(s.get("oracle") for s in e.get("searches") or ())


def _ci(k: int, n: int) -> list[float]:
    lo, hi = wilson_interval(k, n)
    return [round(lo, 4), round(hi, 4)]


def is_oracle(config: dict[str, Any], summary: dict[str, Any] | None = None) -> bool:
    """Whether a run reads gold answers: ``oracle: true`` in its config or summary; for a config
    saved before that key existed, ``RunConfig.oracle`` of it.

    Example:
        >>> is_oracle({"prm": "verifier"}), is_oracle({"prm": None}), is_oracle({}, {"oracle": True})
        (True, False, True)
    """
    if (summary or {}).get("oracle"):
        return True
    if "oracle" in config:
        return bool(config["oracle"])
    from ponder.config import RunConfig

    try:
        return RunConfig.from_dict(dict(config)).oracle
    except PonderError:  # not a whole run config (a hand-made summary): nothing says oracle
        return False


def _labels(
    summary: dict[str, Any],
    config: dict[str, Any],
    episodes: Sequence[dict[str, Any]],
    saved: dict[str, Any] | None = None,
) -> None:
    """Add ``oracle`` and the ``feedback`` level (from the config, else the episodes; none in
    runs older than feedback levels) to a summary, in place."""
    summary["oracle"] = is_oracle(config, summary) or bool((saved or {}).get("oracle"))
    levels = {e["feedback"] for e in episodes if e.get("feedback")}
    feedback = config.get("feedback") or (levels.pop() if len(levels) == 1 else None)
    if feedback:
        summary["feedback"] = feedback


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


def _table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per run, each success rate as ``45.0% [25.8, 65.8]``."""
    k = max((len(s["success_by_trial"]) for s in rows.values()), default=0)
    feedback = any(s.get("feedback") for s in rows.values())
    trials = [f"trial {i}" for i in range(1, k + 1)] if k > 1 else []
    head = ["run", *(["feedback"] if feedback else []), "tasks", "success", *trials]
    head += ["completion tokens", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in rows.items():
        n, solved = s["episodes"], s["solved_by_trial"]
        cells = [_name(name, s)]
        cells += [s.get("feedback") or ""] if feedback else []
        cells += [str(n), format_rate(s["successes"], n)]
        cells += [format_rate(solved[i], n) if i < len(solved) else "" for i in range(len(trials))]
        cells += [str(s["completion_tokens"]), str(s["episode_seconds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _name(name: str, summary: dict[str, Any]) -> str:
    return f"{name} **{ORACLE}**" if summary.get("oracle") else name


_CI_NOTE = "Success rates are shown with their 95 % Wilson interval in brackets."


def write_report(
    run_dir: Path, episodes: Sequence[dict[str, Any]], config: dict[str, Any]
) -> tuple[dict, Path, Path | None]:
    """Write ``summary.json``, ``report.md`` and ``success_by_trial.png`` for one run.

    The config is the run's ``config.yaml`` as a dict; its ``oracle`` and ``feedback`` keys
    (when present) label the report.
    """
    summary = summarize(episodes, config.get("trials"))
    _labels(summary, config, episodes)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    name = config.get("name") or run_dir.name
    curves, ci = {name: summary["success_by_trial"]}, {name: summary["success_by_trial_ci95"]}
    oracle = [name] if summary["oracle"] else []
    plot = (
        plot_success(curves, run_dir / "success_by_trial.png", intervals=ci, oracle=oracle)
        if episodes
        else None
    )
    feedback = f", feedback `{summary['feedback']}`" if summary.get("feedback") else ""
    model = f" {config['model']}" if config.get("model") else ""
    n, wins = summary["episodes"], summary["successes"]
    lines = [
        f"# Run {name}" + (f" — {ORACLE}" if oracle else ""),
        "",
        f"agent `{config.get('agent')}` on env `{config.get('env')}` {config.get('env_kwargs') or ''}, "
        f"{n} tasks, {config.get('trials')} trials, seed {config.get('seed')}, "
        f"policy `{config.get('policy')}`{model}{feedback}",
        "",
        *(_oracle_note(oracle) if oracle else []),
        f"Success: {format_rate(wins, n)} ({wins} of {n} tasks; 95 % Wilson interval).",
        "",
        "## Success by trial (tasks solved within k trials)",
        "",
        _CI_NOTE,
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


def _oracle_note(names: Sequence[str]) -> list[str]:
    return [
        f"> **{ORACLE}**: {', '.join(names)} read the gold answers (an oracle verifier or feedback).",
        "> Its success rate is an upper bound, not what an agent reaches without them.",
        "",
    ]


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


def _saved_summary(run_dir: Path) -> dict[str, Any]:
    try:
        saved = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path) -> tuple[dict[str, dict], Path, Path]:
    """Compare runs on the same tasks: one table, one plot, paired tests, the tasks each solved alone.

    Example:
        ``ponder report runs/a runs/b --out runs/cmp`` prints the ``report.md`` this writes.
    """
    if len(run_dirs) < 1:
        raise ConfigError("compare needs at least one run directory")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"--out {out} is a file; pass a directory for the report and plot, e.g. runs/compare"
        )
    loaded = [load_run(d) for d in run_dirs]  # every run read before anything is written
    out.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict] = {}
    episodes: dict[str, list[dict[str, Any]]] = {}
    for d, (config, eps) in zip(run_dirs, loaded, strict=True):
        label = Path(d).name
        summaries[label] = summarize(eps, config.get("trials"))
        _labels(summaries[label], config, eps, _saved_summary(Path(d)))
        episodes[label] = eps
    oracle = [k for k, s in summaries.items() if s["oracle"]]
    plot = plot_success(
        {k: v["success_by_trial"] for k, v in summaries.items()},
        out / "success_by_trial.png",
        intervals={k: v["success_by_trial_ci95"] for k, v in summaries.items()},
        oracle=oracle,
    )
    lines = ["# Comparison", "", _CI_NOTE, "", _table(summaries), ""]
    lines += _oracle_note(oracle) if oracle else []
    if all("score_by_trial" in v for v in summaries.values()):
        plot_embodied(summaries, out / "score_by_trial.png")
        lines += ["| run | score by trial (0-100) | mean steps to success |", "|---|---|---|"]
        lines += [
            f"| {_name(k, v)} | {' / '.join(f'{x:.0f}' for x in v['score_by_trial'])} "
            f"| {v['mean_steps_to_success']} |"
            for k, v in summaries.items()
        ]
        lines.append("")
    lines += paired_section({k: (summaries[k], episodes[k]) for k in summaries}, oracle)
    solved = {k: {e["task_id"] for e in eps if e.get("success")} for k, eps in episodes.items()}
    for a in summaries:
        for b in summaries:
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
