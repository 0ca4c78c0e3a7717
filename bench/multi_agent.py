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

from ponder.config import RunConfig
from ponder.models.factory import make_policy
from ponder.runner import run

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
    rows = []
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
        s = run(cfg, policy=policy, progress=False).summary
        n = s["episodes"]
        rows.append(
            (
                arm,
                s["success_rate"],
                s["completion_tokens"] / n,
                s["prompt_tokens"] / n,
                time.perf_counter() - t0,
            )
        )
        print(f"{arm:>18}: {s['success_rate']:.1%}  completion tokens/task {rows[-1][2]:.0f}", flush=True)
    lines = [
        f"math levels {args.levels}, {n} tasks, seed {args.seed}, T = {args.temperature}",
        "",
        "| arm | accuracy | completion tokens / task | prompt tokens / task | seconds |",
        "|---|---|---|---|---|",
        *[f"| {a} | {acc:.1%} | {c:.0f} | {p:.0f} | {sec:.0f} |" for a, acc, c, p, sec in rows],
    ]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
