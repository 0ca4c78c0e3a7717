"""Held-out evaluation of a policy (and its PRM): what ``ponder improve`` reports per iteration.

On tasks never trained on (their own task seed) and on a transfer set (the same kind of tasks
phrased as word problems, ``MathEnv(phrasing="words")``), with fixed seeds; or, for another env
with train and test rows (``env="dataset"``), on its ``subset="test"`` rows:

- **greedy**: one answer at temperature 0, the actor prompt the agents use;
- **majority@n**, **best-of-n** and **PRM-weighted best-of-n**: scored on ONE sample set of n
  step-by-step solutions (``ponder.search.sample_and_score``), so all three cost exactly the
  same generated tokens;
- **reflexion vs retry-feedback vs retry** at ``trials`` trials, the same seeds and feedback level
  (binary by default): whether the model uses feedback and its own reflections;
- generated tokens of each.

Every rate comes with its 95 % Wilson interval. The runs of the agents are kept under
``out/`` (their episodes, reports and plots), the numbers in ``out/metrics.json``.

Example:
    >>> from ponder.models import ScriptedPolicy
    >>> import tempfile
    >>> cfg = EvalConfig(tasks=2, samples=2, trials=2, levels=(1,), agents=("retry",))
    >>> m = evaluate_policy(ScriptedPolicy(["Answer: 3"], cycle=True), None, cfg, tempfile.mkdtemp())
    >>> sorted(m["heldout"]), m["heldout"]["greedy"]["n"]
    (['agents', 'greedy', 'samples'], 2)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ponder.errors import ConfigError
from ponder.stats import wilson_interval

__all__ = ["EvalConfig", "EvalSet", "eval_sets", "evaluate_policy", "policy_settings", "prm_backbone", "rate"]


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate on.

    Attributes:
        levels: math levels.
        seed: the held-out task seed: never a seed the training tasks came from.
        tasks: tasks per level.
        words: also evaluate on the word-problem phrasing of the same seed (transfer).
        samples: n of majority@n / best-of-n / weighted best-of-n (0 skips them).
        trials: trials of the agents (0 skips them).
        agents: the agents compared (the method and the baselines that isolate it).
        feedback: the env's feedback level for the agents.
        temperature: sampling temperature of the samples and of the agents.
        max_tokens: new tokens per answer; ``step_tokens`` / ``max_steps`` for step samples.
        concurrency: episodes at once.
        sample_seed: the seed of every sampling call (the same for every iteration).
    """

    levels: tuple[int, ...] = (1, 2, 3)
    seed: int = 1
    tasks: int = 20
    words: bool = True
    samples: int = 8
    trials: int = 3
    agents: tuple[str, ...] = ("reflexion", "retry-feedback", "retry")
    feedback: str = "binary"
    temperature: float = 0.7
    max_tokens: int = 128
    step_tokens: int = 48
    max_steps: int = 6
    concurrency: int = 8
    sample_seed: int = 0

    def __post_init__(self) -> None:
        if self.tasks < 1 or self.samples < 0 or self.trials < 0:
            raise ConfigError("evaluation needs tasks >= 1, samples >= 0 and trials >= 0")


def rate(successes: int, n: int) -> dict[str, Any]:
    """``{"rate", "ci95", "successes", "n"}`` for a success count."""
    lo, hi = wilson_interval(successes, n)
    return {
        "rate": round(successes / n, 4) if n else 0.0,
        "ci95": [round(lo, 4), round(hi, 4)],
        "successes": successes,
        "n": n,
    }


def policy_settings(policy: Any) -> dict[str, Any]:
    """The ``RunConfig`` fields that say which policy a run used (saved with the run), for a
    policy object passed to ``ponder.runner.run``.

    Example:
        >>> from ponder.models import ScriptedPolicy
        >>> policy_settings(ScriptedPolicy(["x"]))["policy"]
        'scripted'
    """
    if hasattr(policy, "base_url") and hasattr(policy, "model"):  # OpenAIPolicy
        return {"policy": "openai", "model": policy.model, "base_url": policy.base_url}
    if hasattr(policy, "path"):  # LocalPolicy
        return {"policy": "local", "model": str(policy.path)}
    return {"policy": "scripted", "script": ("the policy object was passed in",)}


def prm_backbone(policy: Any, fallback: Any = None) -> Any:
    """What a value-head PRM reads for ``policy``: the policy itself when its weights are here
    (a ``LocalPolicy``), else ``fallback`` (a local model folder; None: the recorded or default one)."""
    return policy if hasattr(policy, "model") and hasattr(policy, "tokenizer") else fallback


class EvalSet(NamedTuple):
    """One evaluation set: the env, its options (``RunConfig.env_kwargs``) and how many tasks."""

    env: str
    kwargs: dict[str, Any]
    tasks: int


def eval_sets(
    cfg: EvalConfig, env: str = "math", env_kwargs: dict[str, Any] | None = None
) -> dict[str, EvalSet]:
    """``heldout`` (and ``transfer``) of ``math`` at ``cfg``'s levels and seed; of another env, its
    ``subset="test"`` rows (the first ``cfg.tasks``).

    Example:
        >>> eval_sets(EvalConfig(levels=(1, 2), tasks=5))["transfer"]
        EvalSet(env='math', kwargs={'level': [1, 2], 'phrasing': 'words', 'num_tasks': 5}, tasks=10)
        >>> eval_sets(EvalConfig(tasks=5), "dataset", {"path": "qa.jsonl"})
        {'heldout': EvalSet(env='dataset', kwargs={'path': 'qa.jsonl', 'subset': 'test'}, tasks=5)}
    """
    if env != "math":
        return {"heldout": EvalSet(env, {**(env_kwargs or {}), "subset": "test"}, cfg.tasks)}
    # num_tasks is per level; the run takes all of them (levels interleave in the env's order)
    sets = {"heldout": {}, **({"transfer": {"phrasing": "words"}} if cfg.words else {})}
    return {
        name: EvalSet(
            "math", {"level": list(cfg.levels), **extra, "num_tasks": cfg.tasks}, cfg.tasks * len(cfg.levels)
        )
        for name, extra in sets.items()
    }


def evaluate_policy(
    policy: Any,
    prm: Any,
    cfg: EvalConfig,
    out: str | Path,
    *,
    env: str = "math",
    env_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``policy`` (with ``prm`` for the PRM-scored methods; None skips them) on
    ``eval_sets(cfg, env, env_kwargs)``; writes ``out/metrics.json`` and returns the metrics."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"config": asdict(cfg)}
    if env != "math":
        metrics["config"] |= {"env": env, "env_kwargs": dict(env_kwargs or {})}
    for name, target in eval_sets(cfg, env, env_kwargs).items():
        part: dict[str, Any] = {"greedy": _greedy(policy, cfg, target, out / name)}
        if cfg.samples:
            part["samples"] = _samples(policy, prm, cfg, target)
        if cfg.trials and name == "heldout":
            part["agents"] = _agents(policy, cfg, target, out / name)
        metrics[name] = part
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _run(policy: Any, cfg: EvalConfig, target: EvalSet, out: Path, **kw: Any) -> list[dict[str, Any]]:
    from ponder.config import RunConfig
    from ponder.runner import run

    rc = RunConfig(
        env=target.env,
        env_kwargs=target.kwargs,
        tasks=target.tasks,
        seed=cfg.seed,
        feedback=cfg.feedback,
        max_tokens=cfg.max_tokens,
        concurrency=cfg.concurrency,
        **policy_settings(policy),
        embedder="hashing",
        runs_dir=str(out),
        resume=True,
        **kw,
    )
    return run(rc, policy=policy, progress=False).episodes


def _greedy(policy: Any, cfg: EvalConfig, target: EvalSet, out: Path) -> dict[str, Any]:
    eps = _run(policy, cfg, target, out, agent="retry", trials=1, temperature=0.0, name="greedy")
    tokens = sum(e["completion_tokens"] for e in eps)
    return {**rate(sum(bool(e["success"]) for e in eps), len(eps)), "completion_tokens": tokens}


def _agents(policy: Any, cfg: EvalConfig, target: EvalSet, out: Path) -> dict[str, Any]:
    from ponder.paired import solved_by

    result = {}
    for agent in cfg.agents:
        eps = _run(
            policy,
            cfg,
            target,
            out,
            agent=agent,
            trials=cfg.trials,
            temperature=cfg.temperature,
            name=agent,
        )
        result[agent] = {
            "by_trial": [rate(sum(solved_by(e, k) for e in eps), len(eps)) for k in range(1, cfg.trials + 1)],
            "completion_tokens": sum(e["completion_tokens"] for e in eps),
            "solved": sorted(e["task_id"] for e in eps if e["success"]),
        }
    return result


def _samples(policy: Any, prm: Any, cfg: EvalConfig, target: EvalSet) -> dict[str, Any]:
    from ponder.config import RunConfig
    from ponder.models.types import SamplingParams
    from ponder.runner import make_env_for
    from ponder.search import sample_and_score
    from ponder.search.prompts import problem_for_task

    # the env the runs of this set get (the task seed of math is the evaluation's seed)
    env = make_env_for(RunConfig(env=target.env, env_kwargs=target.kwargs, tasks=target.tasks, seed=cfg.seed))
    methods = ("majority", "best_of_n", "weighted_best_of_n") if prm is not None else ("majority",)
    wins: dict[str, int] = dict.fromkeys(methods, 0)
    tokens = 0
    params = SamplingParams(max_tokens=cfg.step_tokens, temperature=cfg.temperature)
    ids = env.task_ids()[: target.tasks]
    for tid in ids:
        problem = problem_for_task(
            env, tid, policy, prm, seed=cfg.sample_seed, params=params, max_steps=cfg.max_steps
        )
        results = sample_and_score(problem, cfg.samples, methods=methods)
        tokens += results["majority"].budget["generated_tokens"]
        for m, r in results.items():
            ok, _ = env.verifier(tid, cfg.sample_seed)(r.text) if r.text else (False, "")  # graded afterwards
            wins[m] += bool(ok)
    env.close()
    return {
        **{f"{m}@{cfg.samples}": rate(w, len(ids)) for m, w in wins.items()},
        "generated_tokens": tokens,
    }
