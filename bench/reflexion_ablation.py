"""Reflexion against the baselines that isolate it: retry-feedback (the last attempt and its
feedback, no reflection: the paper's ablation) and retry (no feedback), on the same tasks, seeds
and trials, at one feedback level.

Prints success after each trial (the answer the agent would hand in after k trials) with 95 %
Wilson intervals, the exact McNemar test of reflexion against each baseline on final success,
and tokens per task. On HumanEval, success is pass@1 on the hidden tests of that answer, and the
agents' own signal (the visible tests: the docstring's examples, plus ``--agent-tests`` written
by the model) is shown beside it.

    .venv/bin/python bench/reflexion_ablation.py --env math --env-arg level=2 --tasks 60
    .venv/bin/python bench/reflexion_ablation.py --env humaneval --tasks 40 --feedback full
    .venv/bin/python bench/reflexion_ablation.py --policy openai --base-url URL --model NAME ...
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from ponder.cli import key_value
from ponder.config import RunConfig
from ponder.models.factory import make_policy
from ponder.paired import solved_by
from ponder.runner import run
from ponder.stats import format_rate, mcnemar

AGENTS = ("reflexion", "retry-feedback", "retry")


def table(runs: dict[str, list[dict[str, Any]]], trials: int) -> str:
    """Markdown: success after each trial, final McNemar against each baseline, tokens."""
    ids = sorted(set.intersection(*(set(e["task_id"] for e in eps) for eps in runs.values())))
    by = {a: {e["task_id"]: e for e in eps} for a, eps in runs.items()}
    hidden = any("internal_success" in e for eps in runs.values() for e in eps)
    head = ["agent", *(f"after trial {k}" for k in range(1, trials + 1))]
    head += ["visible-test pass (agent's signal)"] if hidden else []
    head += ["reflexion only / other only", "p (McNemar)", "completion tok/task", "prompt tok/task"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    final = {a: [solved_by(by[a][t], trials) for t in ids] for a in runs}
    for a in runs:
        eps = [by[a][t] for t in ids]
        row = [
            a,
            *(format_rate(sum(solved_by(e, k) for e in eps), len(eps)) for k in range(1, trials + 1)),
        ]
        if hidden:
            row.append(format_rate(sum(bool(e.get("internal_success")) for e in eps), len(eps)))
        if a != "reflexion" and "reflexion" in final:
            m = mcnemar(final["reflexion"], final[a])
            row += [f"{m.only_a} / {m.only_b}", f"{m.p_value:.3f}"]
        else:
            row += ["", ""]
        row.append(f"{sum(e['completion_tokens'] for e in eps) / max(1, len(eps)):.0f}")
        row.append(f"{sum(e['prompt_tokens'] for e in eps) / max(1, len(eps)):.0f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="math")
    ap.add_argument("--env-arg", action="append", type=key_value, default=[], metavar="KEY=VALUE")
    ap.add_argument("--tasks", type=int, default=60)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--feedback", default="binary", choices=["binary", "directional", "full"])
    ap.add_argument("--agent-tests", type=int, default=0)
    ap.add_argument("--agents", default=",".join(AGENTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--out", default="runs/bench-reflexion-ablation")
    ap.add_argument("--policy", default="local")
    ap.add_argument("--model")
    ap.add_argument("--base-url")
    ap.add_argument(
        "--script", action="append", default=[], help="replies of --policy scripted (smoke tests)"
    )
    a = ap.parse_args()

    out = Path(a.out) / f"{a.env}-{a.feedback}"
    policy = make_policy(a.policy, model=a.model, base_url=a.base_url, script=tuple(a.script))
    runs, seconds = {}, {}
    for agent in a.agents.split(","):
        shutil.rmtree(out / agent, ignore_errors=True)
        cfg = RunConfig(
            agent=agent,
            env=a.env,
            env_kwargs=dict(a.env_arg),
            feedback=a.feedback,
            tasks=a.tasks,
            trials=a.trials,
            seed=a.seed,
            concurrency=a.concurrency,
            max_tokens=a.max_tokens,
            agent_tests=a.agent_tests,
            policy=a.policy,
            script=tuple(a.script),
            model=a.model,
            base_url=a.base_url,
            name=agent,
            runs_dir=str(out),
        )
        t0 = time.perf_counter()
        runs[agent] = run(cfg, policy=policy, progress=True).episodes
        seconds[agent] = round(time.perf_counter() - t0, 1)
        print(agent, f"{seconds[agent]} s", flush=True)
    text = (
        f"{a.env} {dict(a.env_arg)}, {a.tasks} tasks, {a.trials} trials, {a.feedback} feedback, "
        f"seed {a.seed}, agent tests {a.agent_tests}, policy {getattr(policy, 'name', a.policy)}; "
        f"seconds {seconds}\n\n{table(runs, a.trials)}\n"
    )
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"seconds": seconds, "table": text}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
