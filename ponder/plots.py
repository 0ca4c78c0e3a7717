"""Plots of runs: success by trial with 95 % Wilson bands, and the embodied score panels.

Oracle runs (they read the gold answers) are tagged ``(ORACLE)`` in the legend and named in
the title, so a plot cannot be shown without its caveat.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = plot_success({"a": [0.2, 0.5]}, Path(d) / "s.png", intervals={"a": [[0.1, 0.4], [0.3, 0.7]]})
    ...     p.read_bytes()[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_embodied", "plot_success"]

_ORACLE_TITLE = "ORACLE (reads gold answers): "


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(name: str, oracle: Sequence[str]) -> str:
    return f"{name} (ORACLE)" if name in oracle else name


def _success_axes(
    ax: Any,
    curves: dict[str, Sequence[float]],
    intervals: dict[str, Sequence[Sequence[float]]],
    oracle: Sequence[str],
) -> None:
    """Lines of tasks solved (%) by trial, each with its shaded 95 % interval."""
    for name, ys in curves.items():
        xs = list(range(1, len(ys) + 1))
        (line,) = ax.plot(xs, [100 * y for y in ys], marker="o", label=_label(name, oracle))
        band = intervals.get(name)
        if band and len(band) == len(ys):
            lo, hi = [100 * b[0] for b in band], [100 * b[1] for b in band]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel("trial")
    ax.set_ylabel("tasks solved (%), 95 % CI")
    ax.set_ylim(-2, 102)
    ax.set_xticks(range(1, max((len(v) for v in curves.values()), default=1) + 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _with_oracle(title: str, oracle: Sequence[str]) -> str:
    return f"{title}\n{_ORACLE_TITLE}{', '.join(oracle)}" if oracle else title


def plot_success(
    curves: dict[str, Sequence[float]],
    path: Path,
    title: str = "Success rate by trial",
    *,
    intervals: dict[str, Sequence[Sequence[float]]] | None = None,
    oracle: Sequence[str] = (),
) -> Path:
    """One line per run: x = trial, y = share of tasks solved by then, with its 95 % band.

    Args:
        curves: run label -> success by trial (shares, 0-1).
        path: the PNG to write.
        title: the plot's title.
        intervals: run label -> ``[lo, hi]`` per trial (``summary["success_by_trial_ci95"]``).
        oracle: labels of oracle runs: tagged in the legend and named in the title.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    _success_axes(ax, curves, intervals or {}, oracle)
    ax.set_title(_with_oracle(title, oracle), fontsize=9 if oracle else None)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_embodied(runs: dict[str, dict[str, Any]], path: Path) -> Path:
    """Three panels: tasks solved by trial (95 % bands), mean best score (0-100) within k trials,
    and the steps successful trials took. ``runs`` maps a label to its summary; a summary with
    ``oracle: true`` is tagged."""
    plt = _pyplot()
    oracle = [k for k, s in runs.items() if s.get("oracle")]
    fig, (s, a, b) = plt.subplots(1, 3, figsize=(13, 3.8), dpi=120)
    _success_axes(
        s,
        {k: v.get("success_by_trial", []) for k, v in runs.items()},
        {k: v.get("success_by_trial_ci95", []) for k, v in runs.items()},
        oracle,
    )
    s.set_title("tasks solved by trial")
    for label, summary in runs.items():
        ys = summary.get("score_by_trial", [])
        a.plot(range(1, len(ys) + 1), ys, marker="o", label=_label(label, oracle))
    a.set_xlabel("trial")
    a.set_xticks(range(1, max((len(v.get("score_by_trial", [])) for v in runs.values()), default=1) + 1))
    a.set_ylabel("mean best score so far (0-100)")
    a.set_ylim(-2, 102)
    a.grid(alpha=0.3)
    a.legend(fontsize=7)
    data = [summary.get("steps_to_success") or [] for summary in runs.values()]
    if any(data):
        b.hist(data, label=[_label(k, oracle) for k in runs], bins=10)
        b.legend(fontsize=7)
    b.set_xlabel("steps to success")
    b.set_ylabel("successful trials")
    b.set_title("steps to success" if any(data) else "no successful trial")
    if oracle:
        fig.suptitle(_with_oracle("", oracle).strip(), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
