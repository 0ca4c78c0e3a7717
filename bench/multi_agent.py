"""Debate vs a single agent vs self-consistency on the math env, with completion tokens side by side.

Arms, on the same tasks and seeds, one policy:

* ``single``: one answer (``retry``, one trial);
* ``sc@3`` / ``sc@6``: self-consistency, 3 or 6 independent answers and a majority vote
  (a debate of one round: nothing is read from the others);
* ``debate 3x2``: 3 agents, 2 rounds (6 answers, as many as sc@6), majority;
* ``debate 3x2 judge``: the same, the policy judging the final answers;
* ``team star``: 3 solvers and a summarizer that reads them.

    .venv/bin/python bench/multi_agent.py --tasks 15 --levels 2,3
    .venv/bin/python bench/multi_agent.py --policy openai --base-url URL --model NAME
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ponder.config import RunConfig
from ponder.models.factory import make_policy
from ponder.paired import format_p, versus
from ponder.runner import run
from ponder.stats import format_rate

ARMS = {
    "single": {"agent": "retry"},
    "sc@3": {"agent": "debate", "agents": 3, "rounds": 1},
    "sc@6": {"agent": "debate", "agents": 6, "rounds": 1},
    "debate 3x2": {"agent": "debate", "agents": 3, "rounds": 2},
    "debate 3x2 judge": {"agent": "debate", "agents": 3, "rounds": 2, "aggregator": "judge"},
    "team star": {"agent": "team", "agents": 3, "topology": "star"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=15, help="tasks per level")
    ap.add_argument("--levels", default="2,3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--policy", default="local")
    ap.add_argument("--model")
    ap.add_argument("--base-url")
    ap.add_argument("--out", default="runs/bench-multi-agent")
    args = ap.parse_args()

    levels = [int(x) for x in args.levels.split(",")]
    policy = make_policy(args.policy, model=args.model, base_url=args.base_url)
    arms = {}
    for arm in args.arms.split(","):
        cfg = RunConfig(
            env="math",
            env_kwargs={"level": levels, "num_tasks": args.tasks},
            tasks=args.tasks * len(levels),
            trials=1,
            seed=args.seed,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            concurrency=1,
            policy=args.policy,
            model=args.model,
            base_url=args.base_url,
            embedder="hashing",  # these arms recall nothing; no need to load MiniLM
            runs_dir=args.out,
            name=arm.replace(" ", "-").replace("@", "-at-"),
            resume=True,
            **ARMS[arm],
        )
        t0 = time.perf_counter()
        result = run(cfg, policy=policy, progress=False)
        arms[arm] = (result.episodes, time.perf_counter() - t0)
        s = result.summary
        print(
            f"{arm:>18}: {format_rate(s['successes'], s['episodes'])}  "
            f"completion tokens/task {s['completion_tokens_per_episode']:.0f}",
            flush=True,
        )
    n = len(next(iter(arms.values()))[0])
    lines = [
        f"math levels {args.levels}, {n} tasks, seed {args.seed}, T = {args.temperature}",
        "",
        *table(arms),
    ]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def table(arms: dict[str, tuple[list[dict[str, Any]], float]]) -> list[str]:
    """Markdown lines: each arm's accuracy with its 95 % Wilson interval and, on the tasks both
    ran, the exact McNemar test against the first arm (the baseline).

    Args:
        arms: arm name -> (its episodes, its wall seconds); the first arm is the baseline.
    """
    base_name, (base, _) = next(iter(arms.items()))
    lines = [
        f"| arm | accuracy [95 % CI] | only arm / only {base_name} | p (McNemar) "
        "| completion tokens / task | prompt tokens / task | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, (eps, seconds) in arms.items():
        n = len(eps) or 1
        wins = sum(bool(e["success"]) for e in eps)
        test = "| baseline | " if arm == base_name else _versus(eps, base)
        lines.append(
            f"| {arm} | {format_rate(wins, len(eps))} {test}"
            f"| {sum(e['completion_tokens'] for e in eps) / n:.0f} "
            f"| {sum(e['prompt_tokens'] for e in eps) / n:.0f} | {seconds:.0f} |"
        )
    return lines


def _versus(eps: list[dict[str, Any]], base: list[dict[str, Any]]) -> str:
    r = versus(eps, base)
    return f"| {r.only_a} / {r.only_b} | {format_p(r.p_value)} "


if __name__ == "__main__":
    main()
