"""Reports carry uncertainty: Wilson intervals, paired McNemar tests, oracle and feedback labels."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from ponder.cli import main
from ponder.paired import match_tasks, paired_section, statement, versus
from ponder.report import ORACLE, compare_runs, summarize, write_report
from ponder.stats import format_rate, mcnemar, wilson_interval

PNG = b"\x89PNG\r\n\x1a\n"
BENCH = Path(__file__).resolve().parents[2] / "bench"


def _episode(task: str, first: int | None, trials: int = 3, **extra) -> dict:
    """A finished episode: solved at trial ``first`` (0-based) or never."""
    used = trials if first is None else first + 1
    return {
        "episode_id": f"{task}-0",
        "task_id": task,
        "success": first is not None,
        "first_success_trial": first,
        "trials_used": used,
        "trials": [{"trial": i, "success": i == first, "score": 100.0 * (i == first)} for i in range(used)],
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "seconds": 0.5,
        **extra,
    }


def _run(root: Path, name: str, firsts: list[int | None], **config) -> Path:
    d = root / name
    d.mkdir(parents=True)
    cfg = {"name": name, "agent": "reflexion", "env": "math", "trials": 3, "seed": 0, **config}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    eps = [_episode(f"math/t{i:02d}", f) for i, f in enumerate(firsts)]
    (d / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    return d


def test_summary_intervals_match_wilson():
    # 9 of 20 solved: 3 at the first trial, 6 more at the second
    eps = [_episode(f"t{i}", 0 if i < 3 else 1 if i < 9 else None) for i in range(20)]
    s = summarize(eps, max_trials=3)
    assert s["successes"] == 9 and s["success_rate"] == 0.45
    assert s["success_ci95"] == [0.2582, 0.6579]
    assert s["solved_by_trial"] == [3, 9, 9]
    lo, hi = wilson_interval(3, 20)
    assert s["success_by_trial_ci95"][0] == [round(lo, 4), round(hi, 4)]
    assert s["success_by_trial_ci95"][1] == s["success_ci95"]
    assert not s["oracle"]
    assert summarize([])["success_ci95"] == [0.0, 1.0]


def test_one_run_report_shows_intervals_feedback_and_plot(tmp_path):
    eps = [_episode(f"t{i}", 0 if i < 9 else None) for i in range(20)]
    _, report, plot = write_report(tmp_path, eps, {"name": "r", "trials": 3, "feedback": "directional"})
    text = report.read_text()
    assert "45.0% [25.8, 65.8]" in text and "feedback `directional`" in text
    assert "| directional |" in text and ORACLE not in text
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["success_ci95"] == [0.2582, 0.6579] and len(saved["success_by_trial_ci95"]) == 3
    assert saved["feedback"] == "directional" and saved["oracle"] is False
    assert plot.read_bytes()[:8] == PNG


def test_older_run_without_feedback_shows_none(tmp_path):
    summary, report, _ = write_report(tmp_path, [_episode("t", 0)], {"name": "old", "trials": 3})
    assert "feedback" not in report.read_text() and "feedback" not in summary
    assert not summary["oracle"] and ORACLE not in report.read_text()
    # the level recorded on the episodes is shown when the config lacks it
    summary, report, _ = write_report(tmp_path, [_episode("t", 0, feedback="full")], {"trials": 3})
    assert summary["feedback"] == "full" and "feedback `full`" in report.read_text()


@pytest.mark.parametrize(
    "config, extra",
    [
        ({"oracle": True}, {}),
        ({"agent": "search", "prm": "verifier"}, {}),  # saved before the oracle key
        ({"search_options": {"use_env_reward": True}}, {}),
        ({}, {"searches": [{"algorithm": "beam", "oracle": True}]}),
        ({}, {"oracle": True}),
    ],
)
def test_oracle_runs_are_tagged(tmp_path, config, extra):
    eps = [_episode("t", 0, **extra)]
    summary, report, plot = write_report(tmp_path, eps, {"name": "o", "trials": 3, **config})
    first = report.read_text().splitlines()[0]
    assert first == f"# Run o — {ORACLE}" and summary["oracle"]
    assert f"o **{ORACLE}**" in report.read_text()  # the table's run cell
    assert plot.read_bytes()[:8] == PNG


def test_mcnemar_counts_and_statements():
    a = [_episode(f"t{i}", 0 if i < 12 else None) for i in range(20)]
    b = [_episode(f"t{i}", 0 if i < 2 else None) for i in range(20)]
    r = versus(a, b)
    assert (r.only_a, r.only_b) == (10, 0) and r.p_value == pytest.approx(2 / 2**10)
    assert statement("a", "b", r, 20).startswith("significant at 0.05 (p = 0.002)")
    close = mcnemar([True, True, True, False], [True, False, False, True])
    assert statement("a", "b", close, 4) == (
        "not significant (p = 1.000): a 4-task gap of 1 task is within chance (a only 2, b only 1)."
    )


def test_match_tasks_uses_only_shared_tasks():
    a = [_episode("x", 0), _episode("y", None), _episode("z", 0)]
    b = [_episode("z", None), _episode("w", 0), _episode("x", 0)]
    assert [ea["task_id"] for ea, _ in match_tasks(a, b)] == ["x", "z"]
    r = versus(a, b)
    assert (r.only_a, r.only_b) == (1, 0)


def _pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    # 20 tasks: "reflexion" solves 12 (4 of them at trial 2), "retry" solves 2 of those 12 and 1 more
    ref = _run(tmp_path, "reflexion", [0] * 8 + [1] * 4 + [None] * 8, feedback="binary")
    ret = _run(tmp_path, "retry", [0, 0] + [None] * 10 + [2] + [None] * 7, feedback="binary")
    orc = _run(tmp_path, "beam-verifier", [0] * 19 + [None], agent="search", prm="verifier")
    return ref, ret, orc


def test_compare_runs_reports_mcnemar_and_oracle(tmp_path):
    ref, ret, orc = _pair(tmp_path)
    summaries, report, plot = compare_runs([ref, ret, orc], tmp_path / "cmp")
    text = report.read_text()
    assert "| reflexion | binary | 20 | 60.0% [38.7, 78.1] |" in text
    assert f"| beam-verifier **{ORACLE}** |  | 20 | 95.0% [76.4, 99.1] |" in text
    # final success: reflexion 10 only, retry 1 only -> p = 2 * 11 / 2**11
    assert "| reflexion | retry | 20 | final success | 10 | 1 | 0.012 | significant |" in text
    # by trial 1: 8 vs 2, 6 only vs 0 only -> p = 2 / 2**6 = 0.031
    assert "| reflexion | retry | 20 | solved by trial 1 | 6 | 0 | 0.031 | significant |" in text
    # by trial 2 differs from final (retry's third-trial success is not in yet); trial 3 repeats it
    assert "| reflexion | retry | 20 | solved by trial 2 | 10 | 0 | 0.002 | significant |" in text
    assert "solved by trial 3" not in text
    assert (
        "- **reflexion vs retry**, final success: significant at 0.05 (p = 0.012): on 20 tasks reflexion "
        "solved 10 that retry did not, retry solved 1 that reflexion did not; reflexion is ahead. "
        "By trial k: significant at k = 1, 2."
    ) in text
    assert "(beam-verifier: ORACLE, reads gold answers; an upper bound.)" in text
    assert "p < 0.001" in text and "p = <" not in text
    assert "solved by reflexion but not retry: 10" in text
    saved = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert saved["retry"]["success_ci95"] == summaries["retry"]["success_ci95"]
    assert saved["beam-verifier"]["oracle"] is True and saved["retry"]["feedback"] == "binary"
    assert plot.read_bytes()[:8] == PNG


def test_not_significant_pair(tmp_path):
    a = _run(tmp_path, "a", [0] * 5 + [None] * 15)
    b = _run(tmp_path, "b", [None] * 2 + [0] * 5 + [None] * 13)
    _, report, _ = compare_runs([a, b], tmp_path / "cmp")
    text = report.read_text()
    assert "| a | b | 20 | final success | 2 | 2 | 1.000 | not significant |" in text
    assert "a 20-task gap of 0 tasks is within chance" in text


def test_cli_report_prints_intervals_and_tests(tmp_path, capsys):
    ref, ret, _ = _pair(tmp_path)
    assert main(["report", str(ref), str(ret), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "[38.7, 78.1]" in out and "Paired tests on the same tasks" in out and "McNemar" in out


def _embodied_episode(task: str, score: float) -> dict:
    e = _episode(task, 0 if score == 100 else None, trials=2)
    for t in e["trials"]:
        t.update(steps=[], score=score, steps_taken=3)
    return e


def test_embodied_runs_get_bootstrap_and_three_panel_plot(tmp_path):
    for name, scores in (("on", [100, 80, 60, 90] * 3), ("off", [20, 10, 0, 30] * 3)):
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump({"name": name, "trials": 2}))
        eps = [_embodied_episode(f"g{i}", s) for i, s in enumerate(scores)]
        (d / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    summaries, report, _ = compare_runs([tmp_path / "on", tmp_path / "off"], tmp_path / "cmp")
    text = report.read_text()
    assert "paired bootstrap" in text and "| on | off | 12 | 82.5 | 15.0 | +67.5 [" in text
    assert (tmp_path / "cmp" / "score_by_trial.png").read_bytes()[:8] == PNG
    assert "score_by_trial" in summaries["on"]


def test_paired_section_needs_two_runs_and_shared_tasks():
    assert paired_section({"a": ({}, [_episode("t", 0)])}) == []
    text = "\n".join(paired_section({"a": ({}, [_episode("t", 0)]), "b": ({}, [_episode("u", 0)])}))
    assert "**a vs b**: no task in common" in text and "| a | b |" not in text


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_multi_agent_bench_table():
    m = _bench("multi_agent")
    base = [_episode(f"t{i}", 0 if i < 2 else None, trials=1) for i in range(20)]
    arm = [_episode(f"t{i}", 0 if i < 12 else None, trials=1) for i in range(20)]
    lines = m.table({"single": (base, 10.0), "sc@3": (arm, 20.0)})
    text = "\n".join(lines)
    assert "| single | 10.0% [2.8, 30.1] | baseline |" in text
    assert f"| sc@3 | {format_rate(12, 20)} | 10 / 0 | 0.002 |" in text


def test_memory_modes_bench_table():
    m = _bench("memory_modes")
    levels = [1, 2]
    eps = {
        "off": [_episode(f"math/L{1 + i % 2}/{i // 2}", None, trials=1) for i in range(8)],
        "all": [_episode(f"math/L{1 + i % 2}/{i // 2}", 0, trials=1) for i in range(8)],
    }
    rows = {arm: m.arm_row(e, levels, seconds=1.0) for arm, e in eps.items()}
    assert rows["all"]["success"] == 1.0 and rows["all"]["success_ci95"] == [0.6756, 1.0]
    table = m.table_text(rows, eps)
    assert "| all | 100.0% [67.6, 100.0] |" in table and "| 8 / 0 | 0.008 |" in table
    assert "| off | 0.0% [0.0, 32.4] |" in table and "baseline" in table
    json.dumps(rows)  # results.json stays writable


def test_embodied_bench_arm_line():
    m = _bench("embodied")
    eps = [_embodied_episode(f"g{i}", 100 if i < 3 else 40) for i in range(6)]
    line = m.arm_line("reflect", summarize(eps, 2), seconds=3.0)
    assert "success 50.0% [18.8, 81.2]" in line and "score by trial" in line
