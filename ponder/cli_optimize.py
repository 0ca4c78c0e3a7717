"""``ponder optimize``: search agent designs on an env's dev tasks, score the best on held-out ones.

::

    ponder optimize --level prompt --agent reflexion --env math --env-arg level=2 --dev 10 --heldout 10 \\
        --iterations 4 --budget-tokens 60000 --name opt-prompt
    ponder optimize --level module --env math --dev 8 --heldout 8 --name opt-modules
    ponder optimize --level agent --env math --dev 8 --heldout 8 --iterations 3 --name opt-team

Writes ``RUNS_DIR/NAME/optimize.json`` (every design tried with its dev score and tokens; the
best with its held-out score) and keeps the designs in ``RUNS_DIR/NAME/memory`` (or ``--memory``),
where the next search retrieves them (``ponder memory ls --kind design``).

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser(prog="ponder")
    >>> _ = add_optimize_parser(p.add_subparsers(dest="command"))
    >>> p.parse_args(["optimize", "--level", "module", "--dev", "4"]).heldout
    10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ponder.cli import key_value
from ponder.errors import ConfigError

__all__ = ["add_optimize_parser"]


def cmd_optimize(a: argparse.Namespace) -> int:
    from ponder.agents.optimize import TokenBudget, optimize_modules, optimize_prompt, optimize_team
    from ponder.environments import make
    from ponder.memory import MemoryStore
    from ponder.models.factory import make_policy

    if a.dev < 1 or a.heldout < 0 or a.iterations < 0:
        raise ConfigError(
            f"--dev must be >= 1 and --heldout, --iterations >= 0, got {a.dev}, {a.heldout}, {a.iterations}"
        )
    out = Path(a.runs_dir) / a.name
    if (out / "optimize.json").exists():
        raise ConfigError(f"{out} already holds a search; pass another --name")
    env_kw: dict[str, Any] = dict(a.env_arg)
    if a.env == "math":  # enough seeded tasks for both splits
        env_kw = {"seed": a.seed, "num_tasks": a.dev + a.heldout, **env_kw}
    env = make(a.env, **env_kw)
    ids = env.task_ids()
    if len(ids) < a.dev + a.heldout:
        raise ConfigError(
            f"env {a.env} has {len(ids)} tasks, fewer than --dev {a.dev} + --heldout {a.heldout}"
        )
    dev, heldout = ids[: a.dev], ids[a.dev : a.dev + a.heldout]
    policy = make_policy(a.policy, model=a.model, base_url=a.base_url, script=tuple(a.script or ()))
    out.mkdir(parents=True, exist_ok=True)
    budget = TokenBudget(a.budget_tokens)
    with MemoryStore.open(Path(a.memory) if a.memory else out / "memory", embedder=a.embedder) as memory:
        common = {"dev": dev, "heldout": heldout, "budget": budget, "memory": memory, "seed": a.seed}
        if a.level == "prompt":
            result = optimize_prompt(
                policy,
                env,
                agent=a.agent,
                iterations=a.iterations,
                agent_kw={"max_trials": a.trials},
                **common,
            )
        elif a.level == "module":
            result = optimize_modules(policy, env, max_trials=a.trials, **common)
        else:
            result = optimize_team(policy, env, iterations=a.iterations, **common)
    (out / "optimize.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    print(f"{'iter':>4} {'dev':>6} {'tokens':>8}  design")
    for d in result.history:
        print(f"{d.iteration:>4} {d.dev:>6.0%} {d.tokens:>8}  {' '.join(d.text.split())[:100]}")
    for label, d in (("start", result.start), ("best", result.best)):
        held = d.scores.get("heldout")
        print(f"{label}: dev {d.dev:.0%}" + (f", held-out {held:.0%}" if held is not None else ""))
    print(f"{result.tokens} tokens spent{', budget exhausted' if result.stopped_by_budget else ''}")
    b = result.best
    print(f"best design: {b.text}")
    print(f"results: {out / 'optimize.json'}")
    return 0


def add_optimize_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``ponder optimize`` on ``subparsers``."""
    p = subparsers.add_parser(
        "optimize", help="search agent designs: prompt, modules or team (agentic system search)"
    )
    p.add_argument("--level", choices=["prompt", "module", "agent"], default="prompt")
    p.add_argument(
        "--agent", default="reflexion", help="the agent whose instruction is optimised (--level prompt)"
    )
    p.add_argument("--env", default="math")
    p.add_argument("--env-arg", action="append", type=key_value, default=[], metavar="KEY=VALUE")
    p.add_argument("--dev", type=int, default=10, help="dev tasks every design is scored on")
    p.add_argument("--heldout", type=int, default=10, help="held-out tasks the best design is scored on")
    p.add_argument("--iterations", type=int, default=4, help="proposals (prompt and agent levels)")
    p.add_argument("--trials", type=int, default=1, help="trials per task of the evaluated agents")
    p.add_argument("--budget-tokens", type=int, default=None, help="tokens the whole search may spend")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", default="local", choices=["local", "openai", "scripted"])
    p.add_argument("--model")
    p.add_argument("--base-url")
    p.add_argument("--script", action="append", help="a reply of the scripted policy (repeatable)")
    p.add_argument("--embedder", default="minilm", choices=["minilm", "hashing"])
    p.add_argument("--memory", help="a memory directory holding earlier designs (default RUN_DIR/memory)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--name", default="optimize")
    p.set_defaults(fn=cmd_optimize)
    return p
