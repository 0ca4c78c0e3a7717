"""Self-Refine-style refinement against retry and Reflexion, on the same tasks, seeds and trials.

Every arm spends the same number of answers per task (``--trials``) and samples answer ``k``
with the same seed, so all arms start from the same first answer. What each arm is told between
answers differs:

- ``self-refine``: its own critique of its answer; no env signal at all. It stops when its
  critique says "It is correct" (or after ``--trials`` answers) and hands in its last answer,
  right or not;
- ``retry``: nothing (blind resampling); it stops at the first answer the env grades right;
- ``retry-feedback``: its last answer and the env's feedback; stops on the env's success;
- ``reflexion``: the env's feedback and its own reflection on it; stops on the env's success.

So retry, retry-feedback and Reflexion use the env's grade (to stop, and the last two in the
prompt); Self-Refine does not. "After answer k" is the answer the agent would hand in after k
answers (``ponder.paired.solved_by``); for Self-Refine "any answer" is also shown: a task where
some answer was right, which only an oracle could pick. p: exact McNemar of self-refine against
that arm on final success. Tokens are per task: answers, critiques and reflections together.

    OMP_NUM_THREADS=2 .venv/bin/python bench/self_refine.py --env-arg level=[1,2] --tasks 20
    .venv/bin/python bench/self_refine.py --policy openai --base-url URL --model NAME ...
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

AGENTS = ("self-refine", "retry", "retry-feedback", "reflexion")
#: what reaches each arm from the env between its answers
ENV_SIGNAL = {
    "self-refine": "none",
    "retry": "stop on success",
    "retry-feedback": "feedback; stop on success",
    "reflexion": "feedback; stop on success",
}


def table(runs: dict[str, list[dict[str, Any]]], trials: int) -> str:
    """Markdown: success after each answer, any answer, final McNemar against self-refine, tokens."""
    ids = sorted(set.intersection(*(set(e["task_id"] for e in eps) for eps in runs.values())))
    by = {a: {e["task_id"]: e for e in eps} for a, eps in runs.items()}
    head = ["agent", "env signal", *(f"after answer {k}" for k in range(1, trials + 1))]
    head += ["any answer right", "stopped by own critique", "answers/task"]
    head += ["self-refine only / other only", "p (McNemar)", "generated tok/task", "prompt tok/task"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    final = {a: [solved_by(by[a][t], trials) for t in ids] for a in runs}
    for a in runs:
        eps = [by[a][t] for t in ids]
        n = max(1, len(eps))
        any_right = sum(e.get("first_success_trial") is not None for e in eps)
        critique_stops = sum(bool(e["trials"] and e["trials"][-1].get("stopped")) for e in eps)
        row = [
            a,
            ENV_SIGNAL.get(a, "?"),
            *(format_rate(sum(solved_by(e, k) for e in eps), len(eps)) for k in range(1, trials + 1)),
            format_rate(any_right, len(eps)),
            f"{critique_stops}/{len(eps)}" if a == "self-refine" else "",
            f"{sum(e['trials_used'] for e in eps) / n:.2f}",
        ]
        if a != "self-refine" and "self-refine" in final:
            m = mcnemar(final["self-refine"], final[a])
            row += [f"{m.only_a} / {m.only_b}", f"{m.p_value:.3f}"]
        else:
            row += ["", ""]
        row.append(f"{sum(e['completion_tokens'] for e in eps) / n:.0f}")
        row.append(f"{sum(e['prompt_tokens'] for e in eps) / n:.0f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def critic_line(episodes: list[dict[str, Any]]) -> str:
    """How well Self-Refine's critique tells right answers from wrong ones (the env's grade, which
    the agent never saw, decides which is which)."""
    judged = [
        (t["success"], t["stopped"]) for e in episodes for t in e["trials"] if t.get("critique") is not None
    ]
    right = [done for ok, done in judged if ok]
    wrong = [done for ok, done in judged if not ok]
    held = sum(bool(e["trials"][0]["success"]) and not e["success"] for e in episodes)
    fixed = sum(not e["trials"][0]["success"] and bool(e["success"]) for e in episodes)
    return (
        f"self-refine critiques: {len(judged)}; said 'It is correct' on {sum(right)}/{len(right)} right "
        f"answers and on {sum(wrong)}/{len(wrong)} wrong ones. Refinement turned {fixed} wrong first "
        f"answers right and {held} right first answers wrong."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="math")
    ap.add_argument("--env-arg", action="append", type=key_value, default=[], metavar="KEY=VALUE")
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--feedback", default="binary", choices=["binary", "directional", "full"])
    ap.add_argument("--agents", default=",".join(AGENTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--out", default="runs/bench-self-refine")
    ap.add_argument("--policy", default="local")
    ap.add_argument("--model")
    ap.add_argument("--base-url")
    ap.add_argument(
        "--script", action="append", default=[], help="replies of --policy scripted (smoke tests)"
    )
    ap.add_argument("--report-only", action="store_true", help="print the table of the runs in --out again")
    a = ap.parse_args()

    out = Path(a.out) / f"{a.env}-{a.feedback}"
    if a.report_only:
        from ponder.episodes import read_episodes

        runs = {
            x: read_episodes(out / x / "episodes.jsonl") for x in a.agents.split(",") if (out / x).is_dir()
        }
        print(table(runs, a.trials))
        if "self-refine" in runs:
            print("\n" + critic_line(runs["self-refine"]))
        return
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
            policy=a.policy,
            script=tuple(a.script),
            model=a.model,
            base_url=a.base_url,
            memory="none",  # no arm here reads memory
            name=agent,
            runs_dir=str(out),
        )
        t0 = time.perf_counter()
        runs[agent] = run(cfg, policy=policy, progress=False).episodes
        seconds[agent] = round(time.perf_counter() - t0, 1)
        print(agent, f"{seconds[agent]} s", flush=True)
    text = (
        f"{a.env} {dict(a.env_arg)}, {a.tasks} tasks, {a.trials} answers per task, {a.feedback} env "
        f"feedback (for the arms that see it), seed {a.seed}, T = {cfg.temperature}, {a.max_tokens} tokens per answer, "
        f"policy {getattr(policy, 'name', a.policy)}; seconds {seconds}\n\n{table(runs, a.trials)}\n"
    )
    if "self-refine" in runs:
        text += "\n" + critic_line(runs["self-refine"]) + "\n"
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"seconds": seconds, "table": text}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
