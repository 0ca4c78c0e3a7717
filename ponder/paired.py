"""Paired comparisons of runs on the same tasks: exact McNemar on success, bootstrap on scores.

Two runs are compared only on the tasks both ran, matched by ``task_id``. On 0/1 success the
test is the exact McNemar test (``ponder.stats.mcnemar``): only the tasks exactly one run
solved carry evidence. Embodied runs (scores 0-100) are also compared on the best score of each
episode with a paired bootstrap. ``paired_section`` renders both as markdown for ``report.md``.

Example:
    >>> a = [{"task_id": str(i), "success": i < 9} for i in range(20)]
    >>> b = [{"task_id": str(i), "success": i < 2} for i in range(20)]
    >>> r = versus(a, b)
    >>> r.only_a, r.only_b, round(r.p_value, 4)
    (7, 0, 0.0156)
    >>> print(statement("a", "b", r, tasks=20))
    significant at 0.05 (p = 0.016): on 20 tasks a solved 7 that b did not, b solved 0 that a did not; a is ahead.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

from ponder.stats import McNemar, mcnemar, paired_bootstrap

__all__ = ["best_score", "format_p", "match_tasks", "paired_section", "solved_by", "statement", "versus"]

ALPHA = 0.05


def match_tasks(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> list[tuple[dict, dict]]:
    """Episode pairs ``(from a, from b)`` of the tasks both ran, in ``a``'s task order.

    A task listed twice in one run counts once (its last episode).

    Example:
        >>> [x["task_id"] for x, _ in match_tasks([{"task_id": "t1"}, {"task_id": "t2"}], [{"task_id": "t2"}])]
        ['t2']
    """
    by_b = {e["task_id"]: e for e in b}
    by_a = {e["task_id"]: e for e in a}
    return [(ea, by_b[t]) for t, ea in by_a.items() if t in by_b]


def solved_by(episode: dict[str, Any], k: int | None = None) -> bool:
    """Whether the episode succeeded (``k=None``) or succeeded within its first ``k`` trials.

    Where grades the agent never saw decide the episode (HumanEval's hidden tests; an agent that
    stops on its own critique, as Self-Refine does), "within k trials" is whether the answer the
    agent would hand in after ``k`` trials is right (``final_by_trial``; runs logged before it
    was named say ``hidden_by_trial``): an agent that moved on from a right answer has not
    solved the task.

    Example:
        >>> e = {"success": True, "first_success_trial": 1}
        >>> solved_by(e), solved_by(e, 1), solved_by(e, 2)
        (True, False, True)
        >>> solved_by({"success": False, "final_by_trial": [True, False]}, 1)
        True
    """
    if k is None:
        return bool(episode.get("success"))
    graded = episode.get("final_by_trial") or episode.get("hidden_by_trial")
    if graded:
        return bool(graded[min(k, len(graded)) - 1])
    first = episode.get("first_success_trial")
    return first is not None and first < k


def best_score(episode: dict[str, Any]) -> float:
    """The best score (0-100) any trial of an embodied episode reached; 0 without trials."""
    return max((float(t.get("score", 0.0)) for t in episode.get("trials", [])), default=0.0)


def versus(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], k: int | None = None) -> McNemar:
    """The exact McNemar test of two runs' success (within ``k`` trials) on the tasks both ran."""
    pairs = match_tasks(a, b)
    return mcnemar([solved_by(x, k) for x, _ in pairs], [solved_by(y, k) for _, y in pairs])


def format_p(p: float) -> str:
    """A p-value for a table: three decimals, or ``< 0.001``.

    Example:
        >>> format_p(0.03125), format_p(0.0002)
        ('0.031', '< 0.001')
    """
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def statement(name_a: str, name_b: str, r: McNemar, tasks: int) -> str:
    """One plain sentence: is the difference significant at 0.05, and which run is ahead.

    Example:
        >>> print(statement("a", "b", mcnemar([1, 1, 1, 0, 0], [0, 1, 0, 0, 1]), tasks=5))
        not significant (p = 1.000): a 5-task gap of 1 task is within chance (a only 2, b only 1).
    """
    gap = abs(r.only_a - r.only_b)
    p = "p < 0.001" if r.p_value < 0.001 else f"p = {format_p(r.p_value)}"
    if not r.significant(ALPHA):
        unit = "task" if gap == 1 else "tasks"
        return (
            f"not significant ({p}): a {tasks}-task gap of {gap} {unit} is within chance "
            f"({name_a} only {r.only_a}, {name_b} only {r.only_b})."
        )
    ahead = name_a if r.only_a > r.only_b else name_b
    return (
        f"significant at 0.05 ({p}): on {tasks} tasks {name_a} solved {r.only_a} that "
        f"{name_b} did not, {name_b} solved {r.only_b} that {name_a} did not; {ahead} is ahead."
    )


def _by_trial_note(tests: list[tuple[str, McNemar]]) -> str:
    """``"By trial k: significant at k = 1, 2; not at k = 3."`` for the per-trial tests."""
    ks = [(what.rsplit(" ", 1)[-1], r.significant(ALPHA)) for what, r in tests]
    yes, no = [k for k, sig in ks if sig], [k for k, sig in ks if not sig]
    parts = ([f"significant at k = {', '.join(yes)}"] if yes else []) + (
        [f"{'not at' if yes else 'not significant at'} k = {', '.join(no)}"] if no else []
    )
    return f" By trial k: {'; '.join(parts)}." if ks else ""


def _measures(pairs: list[tuple[dict, dict]], k_a: int, k_b: int) -> list[tuple[str, McNemar]]:
    """McNemar on final success, then on success by trial k where both runs have trials."""
    final = ([solved_by(x) for x, _ in pairs], [solved_by(y) for _, y in pairs])
    out = [("final success", mcnemar(*final))]
    if min(k_a, k_b) > 1:
        for k in range(1, min(k_a, k_b) + 1):
            by_k = ([solved_by(x, k) for x, _ in pairs], [solved_by(y, k) for _, y in pairs])
            if by_k != final:  # the last trial usually repeats the final outcome
                out.append((f"solved by trial {k}", mcnemar(*by_k)))
    return out


def paired_section(
    runs: dict[str, tuple[dict[str, Any], Sequence[dict[str, Any]]]], oracle: Sequence[str] = ()
) -> list[str]:
    """Markdown lines: McNemar (and, for embodied runs, bootstrap) for every pair of runs.

    Args:
        runs: run label -> (its summary from ``ponder.report.summarize``, its episodes).
        oracle: labels of oracle runs (they read gold answers), flagged in the statements.

    Example:
        >>> eps = [{"task_id": "t", "success": True}]
        >>> paired_section({"a": ({}, eps)})
        []
    """
    if len(runs) < 2:
        return []
    lines = [
        "## Paired tests on the same tasks",
        "",
        "Exact McNemar test on the tasks both runs ran (matched by task id).",
        "*A only*: tasks A solved and B did not. Significant: p < 0.05.",
        "",
        "| A | B | tasks | outcome | A only | B only | p (McNemar) | at 0.05 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes, scores = [], []
    for a, b in combinations(runs, 2):
        (sa, ea), (sb, eb) = runs[a], runs[b]
        pairs = match_tasks(ea, eb)
        if not pairs:
            notes.append(f"- **{a} vs {b}**: no task in common; nothing to compare.")
            continue
        k_a, k_b = len(sa.get("success_by_trial", [])), len(sb.get("success_by_trial", []))
        tests = _measures(pairs, k_a, k_b)
        for what, r in tests:
            verdict = "significant" if r.significant(ALPHA) else "not significant"
            lines.append(
                f"| {a} | {b} | {len(pairs)} | {what} | {r.only_a} | {r.only_b} "
                f"| {format_p(r.p_value)} | {verdict} |"
            )
        tagged = [x for x in (a, b) if x in oracle]
        notes.append(
            f"- **{a} vs {b}**, final success: {statement(a, b, tests[0][1], len(pairs))}"
            + _by_trial_note(tests[1:])
            + (f" ({' and '.join(tagged)}: ORACLE, reads gold answers; an upper bound.)" if tagged else "")
        )
        if "score_by_trial" in sa and "score_by_trial" in sb:
            scores.append(_bootstrap_row(a, b, pairs))
    lines += ["", *notes, ""]
    if scores:
        lines += [
            "Embodied runs, best score per episode (0-100), paired bootstrap of the mean difference:",
            "",
            "| A | B | tasks | mean A | mean B | A - B [95 % CI] | p (bootstrap) | at 0.05 |",
            "|---|---|---|---|---|---|---|---|",
            *scores,
            "",
        ]
    return lines


def _bootstrap_row(a: str, b: str, pairs: list[tuple[dict, dict]]) -> str:
    xa, xb = [best_score(x) for x, _ in pairs], [best_score(y) for _, y in pairs]
    diff, (lo, hi), p = paired_bootstrap(xa, xb)
    verdict = "significant" if p < ALPHA else "not significant"
    n = len(pairs)
    return (
        f"| {a} | {b} | {n} | {sum(xa) / n:.1f} | {sum(xb) / n:.1f} | {diff:+.1f} [{lo:+.1f}, {hi:+.1f}] "
        f"| {format_p(p)} | {verdict} |"
    )
