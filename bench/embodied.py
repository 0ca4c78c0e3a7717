"""The embodied agent with reflection and memory off vs on, on TextWorld games or ScienceWorld tasks.

Three arms on the same tasks, seeds and policy, one after another:

* ``off``: ``embodied-retry`` (no reflection between trials), no memory recalled;
* ``reflect``: ``embodied`` (Reflexion across trials), no memory recalled;
* ``reflect+memory``: ``embodied`` with ``--memory-modes reflective,concept``: reflections
  stored and recalled, CLIN causal lessons written after each trial and recalled by later
  trials and later tasks (tasks run one after another, so later tasks can use earlier ones).

Writes a run directory per arm and ``OUT/compare/`` (``report.md``: success with 95 % Wilson
intervals and score by trial, exact McNemar tests on success and a paired bootstrap on the best
score of each arm against each other; ``score_by_trial.png``).

    .venv/bin/python bench/embodied.py --env textworld --env-arg level=1 --tasks 6
    .venv/bin/python bench/embodied.py --env scienceworld --task boil --task find-plant \\
        --task melt --tasks 3 --env-steps 15
    .venv/bin/python bench/embodied.py --policy openai --base-url URL --model NAME --env textworld
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ponder.cli import key_value
from ponder.config import RunConfig
from ponder.models.factory import make_policy
from ponder.report import compare_runs
from ponder.runner import run
from ponder.stats import format_rate

ARMS = {
    "off": {"agent": "embodied-retry", "memory_modes": ()},
    "reflect": {"agent": "embodied", "memory_modes": ()},
    "reflect+memory": {"agent": "embodied", "memory_modes": ("reflective", "concept")},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="textworld")
    ap.add_argument("--env-arg", action="append", type=key_value, default=[], metavar="KEY=VALUE")
    ap.add_argument("--task", action="append", default=[], help="named tasks (ScienceWorld)")
    ap.add_argument("--tasks", type=int, default=6)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--env-steps", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--embedder", default="minilm")
    ap.add_argument("--policy", default="local")
    ap.add_argument("--model")
    ap.add_argument("--base-url")
    ap.add_argument("--out", default=None, help="runs directory (default runs/bench-embodied-ENV)")
    args = ap.parse_args()

    env_kwargs: dict[str, Any] = dict(args.env_arg)
    if args.task:
        env_kwargs["tasks"] = args.task[0] if len(args.task) == 1 else list(args.task)
    out = Path(args.out or f"runs/bench-embodied-{args.env}")
    policy = make_policy(args.policy, model=args.model, base_url=args.base_url)
    dirs = []
    for arm in args.arms.split(","):
        cfg = RunConfig(
            env=args.env,
            env_kwargs=env_kwargs,
            tasks=args.tasks,
            trials=args.trials,
            env_steps=args.env_steps,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            seed=args.seed,
            concurrency=1,  # later tasks may recall what earlier ones wrote
            policy=args.policy,
            model=args.model,
            base_url=args.base_url,
            embedder=args.embedder,
            runs_dir=str(out),
            name=arm.replace("+", "-"),
            resume=True,
            **ARMS[arm],
        )
        t0 = time.perf_counter()
        result = run(cfg, policy=policy, progress=False)
        print(arm_line(arm, result.summary, time.perf_counter() - t0), flush=True)
        dirs.append(result.run_dir)
    summaries, report, _plot = compare_runs(dirs, out / "compare")
    text = report.read_text()
    for d in dirs:  # what memory learned: the causal lessons (insights) each arm wrote
        from ponder.memory import MemoryStore

        with MemoryStore.open(d / "memory", embedder=args.embedder) as store:
            lessons = [i.text for i in store.list(kind="insight", where={"status": "active"})]
        if lessons:
            text += f"\n{len(lessons)} active lessons in {d.name}'s memory, e.g.:\n"
            text += "".join(f"- {x}\n" for x in lessons[:5])
    report.write_text(text)
    print(text)
    (out / "compare" / "bench.json").write_text(
        json.dumps({"args": vars(args), "summaries": summaries}, indent=1)
    )
    print(f"report: {report}  plot: {out / 'compare' / 'score_by_trial.png'}")


def arm_line(arm: str, s: dict[str, Any], seconds: float) -> str:
    """One arm's progress line: success (95 % Wilson interval) overall and by trial, scores, steps.

    ``s`` is the run's summary (``ponder.report.summarize``).
    """
    n = s["episodes"]
    by_trial = " / ".join(format_rate(k, n) for k in s["solved_by_trial"])
    return (
        f"{arm:>15}: success {format_rate(s['successes'], n)}  by trial {by_trial}  "
        f"score by trial {s.get('score_by_trial')}  steps to success {s.get('mean_steps_to_success')}  "
        f"tokens {s['completion_tokens']}  ({seconds:.0f} s)"
    )


if __name__ == "__main__":
    main()
