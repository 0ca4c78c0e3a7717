"""Run an agent over an env's tasks: episodes, checkpoints, memory, report.

``run(cfg)`` writes ``runs/NAME/``::

    config.yaml          the RunConfig (a resumed run reloads it)
    episodes.jsonl       one line per finished episode (atomic, idempotent by episode id)
    checkpoints.sqlite   LangGraph SqliteSaver: unfinished episodes continue from here
    memory/              the Chroma memory (an experience per episode, reflections), unless --memory points elsewhere
    report.md, summary.json, success_by_trial.png

Example:
    >>> from ponder.config import RunConfig
    >>> from ponder.runner import run
    >>> import tempfile
    >>> cfg = RunConfig(agent="retry", env="math", tasks=2, trials=2, policy="scripted",
    ...                 script=("Answer: 3",), runs_dir=tempfile.mkdtemp())
    >>> result = run(cfg, progress=False)
    >>> len(result.episodes)
    2
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ponder.agents import AGENT_SPECS, AgentContext, trials_for
from ponder.config import RunConfig
from ponder.environments import make, spec
from ponder.environments.base import TextEnv
from ponder.episodes import EpisodeLog, trials_problem
from ponder.errors import ConfigError, PonderError, UnknownName
from ponder.models.check import ensure_policy
from ponder.models.factory import make_policy, make_prm
from ponder.models.types import Policy, SamplingParams
from ponder.report import write_report

__all__ = ["RunResult", "make_env_for", "run"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    episodes: list[dict[str, Any]]
    summary: dict[str, Any]
    report: Path
    plot: Path | None


def make_env_for(cfg: RunConfig) -> TextEnv:
    """The env of ``cfg``; ``seed`` and ``num_tasks`` (``num_games``) are passed when the env takes them."""
    factory = spec(cfg.env).load()
    kwargs = dict(cfg.env_kwargs)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if "seed" in params:
        kwargs.setdefault("seed", cfg.seed)
    if "num_tasks" in params:
        kwargs.setdefault("num_tasks", cfg.tasks)
    if "num_games" in params:  # TextWorld: games are generated lazily, so asking for enough costs nothing
        kwargs.setdefault("num_games", cfg.tasks)
    if "feedback" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs["feedback"] = cfg.feedback
    return make(cfg.env, **kwargs)


def _prepare_dir(cfg: RunConfig) -> RunConfig:
    """Check or create ``cfg.run_dir``; a resumed run gets its saved settings back.

    The directory is the run's identity: a moved or copied run resumes where it now is,
    whatever name its saved config holds; its records keep the ``run_id`` they started with.
    """
    saved = cfg.run_dir / "config.yaml"
    _check_writable(cfg.run_dir)
    if saved.exists() and not cfg.resume:
        raise ConfigError(
            f"run directory {cfg.run_dir} already exists; pass --resume to continue it or --name for a new run"
        )
    if saved.exists():
        old = RunConfig.from_yaml(saved)
        changed = [
            f"{k}={getattr(cfg, k)!r} (was {getattr(old, k)!r})"
            for k in RunConfig.defining()
            if getattr(cfg, k) != getattr(old, k)
        ]
        if changed:
            raise ConfigError(
                f"cannot resume {cfg.run_dir} with other settings: {', '.join(changed)}; "
                "drop those flags to resume it, or pass --name for a new run"
            )
        # only how it runs may change: concurrency, progress, where it lives
        return old.replace(
            resume=True,
            concurrency=cfg.concurrency,
            runs_dir=cfg.runs_dir,
            name=cfg.run_dir.name,
            run_id=old.run_id or old.run_name,
        )
    cfg = cfg.replace(run_id=cfg.run_id or cfg.run_name)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_suffix(".tmp")
    cfg.save(tmp)
    tmp.replace(saved)
    return cfg


def _check_writable(run_dir: Path) -> None:
    """Refuse, before anything is loaded, a run directory (or runs dir) that cannot be written."""
    probe = run_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or os.access(probe, os.W_OK | os.X_OK):
        return
    why = "is on a read-only file system" if _read_only_fs(probe) else "is not writable (permissions)"
    if probe == run_dir:
        raise ConfigError(
            f"run directory {run_dir} {why}; copy it somewhere writable and resume the copy there: "
            f"cp -r {run_dir} DIR/ && ponder run --runs-dir DIR --name {run_dir.name} --resume"
        )
    raise ConfigError(f"cannot create {run_dir}: {probe} {why}; pass --runs-dir DIR on a writable disk")


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _open_memory(cfg: RunConfig) -> Any:
    from ponder.memory import MemoryStore

    if cfg.memory_url:
        return MemoryStore.connect(cfg.memory_url, embedder=cfg.embedder)
    return MemoryStore.open(cfg.memory_dir, embedder=cfg.embedder)


def run(
    cfg: RunConfig,
    *,
    policy: Policy | None = None,
    progress: bool = True,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Run ``cfg``'s agent on its env's first ``cfg.tasks`` tasks and write the run directory.

    Args:
        cfg: the run configuration.
        policy: use this policy instead of building one from ``cfg``.
        progress: show a Rich progress bar.
        on_episode: called with each finished episode record.
    """
    if policy is not None:
        ensure_policy(policy)  # a wrong object fails here, in one line, not deep in a graph node
    if cfg.agent not in AGENT_SPECS:
        raise UnknownName.for_registry("agent", cfg.agent, AGENT_SPECS)
    spec(cfg.env)  # fail on an unknown env before anything is written
    check_search(cfg)
    fresh = not (cfg.run_dir / "config.yaml").exists()
    cfg = _prepare_dir(cfg)
    try:
        return _run(cfg, policy, progress, on_episode)
    except (ConfigError, UnknownName):
        # bad input found once the run had started (an env option, a search option): a run
        # directory with no episode in it would only block the corrected command, so it goes.
        # Other failures (a full disk, a backend down) keep it: its checkpoints are work done.
        if fresh and not EpisodeLog(cfg.run_dir / "episodes.jsonl").read():
            shutil.rmtree(cfg.run_dir, ignore_errors=True)
        raise


def _run(cfg: RunConfig, policy: Any, progress: bool, on_episode: Any) -> RunResult:
    probe = make_env_for(cfg)
    task_ids = probe.task_ids()[: cfg.tasks]
    probe.close()
    episodes = EpisodeLog(cfg.run_dir / "episodes.jsonl")
    # a server takes as many requests as the episodes send at once (several each: debate, n samples)
    extra = {"max_concurrency": max(8, 4 * cfg.concurrency)} if cfg.policy == "openai" else {}
    policy = policy or make_policy(
        cfg.policy,
        model=cfg.model,
        base_url=cfg.base_url,
        device=cfg.device,
        dtype=cfg.dtype,
        script=cfg.script,
        **extra,
    )

    with ExitStack() as stack:
        memory = None if cfg.memory_off else _open_memory(cfg)
        if memory is not None:
            stack.callback(memory.close)
        conn = sqlite3.connect(cfg.run_dir / "checkpoints.sqlite", check_same_thread=False)
        stack.callback(conn.close)
        from langgraph.checkpoint.sqlite import SqliteSaver

        agent = AGENT_SPECS[cfg.agent]
        graph = agent.factory(
            policy,
            memory=memory if agent.uses_memory else None,
            max_trials=cfg.trials,
            checkpointer=SqliteSaver(conn),
            **agent_options(cfg, policy),
        )
        if getattr(graph, "topology", None) is not None:  # teams: a picture of who talks to whom
            from ponder.agents.topology import draw_topology

            draw_topology(graph.topology, cfg.run_dir / "topology.png")
        todo = [t for t in task_ids if _episode_id(t, cfg.seed) not in episodes]

        def one(task_id: str) -> None:
            record = _run_episode(graph, cfg, task_id, policy)
            # memory first: a kill between the two re-runs the episode's last step and
            # overwrites the same experience id, never duplicates it
            if memory is not None:
                memory.add(experience_from_episode(record))
            if episodes.append(record) and on_episode:
                on_episode(record)

        _run_all(one, todo, cfg.concurrency, progress, done=len(task_ids) - len(todo), total=len(task_ids))

    all_eps = [e for e in episodes.read() if e["task_id"] in set(task_ids)]
    summary, report, plot = write_report(cfg.run_dir, all_eps, cfg.to_dict())
    return RunResult(cfg.run_dir, all_eps, summary, report, plot)


def check_search(cfg: RunConfig) -> None:
    """Refuse a search setting that cannot work, before anything is written or loaded."""
    if cfg.agent != "search" and not cfg.actor_search:
        return
    from ponder.agents.search_agent import check_search_settings
    from ponder.models.factory import check_prm_spec

    if cfg.prm is not None:
        check_prm_spec(cfg.prm)
    check_search_settings(
        cfg.actor_search or cfg.algorithm,
        has_prm=cfg.prm not in (None, "none"),
        n=cfg.n,
        budget=cfg.search_tokens,
    )


def agent_options(cfg: RunConfig, policy: Policy) -> dict[str, Any]:
    """The agent factory's own keyword arguments for ``cfg``: sampling, and each run option its
    ``AgentSpec.options`` names, under the keyword ``RunConfig`` declares for it. A few options
    become objects: ``prm`` a PRM, ``actor_search`` a ``SearchActor``, ``concept`` the memory
    nodes' concept settings."""
    from ponder.agents.memory_nodes import concept_options
    from ponder.config import option_meta

    spec = AGENT_SPECS[cfg.agent]
    params = SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature)
    step = SamplingParams(max_tokens=cfg.step_tokens, temperature=cfg.temperature)
    searching = cfg.agent == "search" or bool(cfg.actor_search)
    kw: dict[str, Any] = {"params": step if cfg.agent == "search" else params}
    search: dict[str, Any] = {"algorithm": cfg.actor_search or cfg.algorithm}
    for name in spec.options:
        value = getattr(cfg, name)
        if name in ("concept", "insight_set", "step_tokens", "actor_search", "algorithm"):
            continue  # built below
        if name == "agent_tests" and not value:
            continue  # factories default to none
        if name == "prm":
            value = (
                make_prm(cfg.prm, policy=policy, device=cfg.device, dtype=cfg.dtype) if searching else None
            )
        key = option_meta(RunConfig.model_fields[name])["arg"] or name
        if name in _SEARCH_OPTIONS:
            value = dict(value) if isinstance(value, dict) else value
            search[key] = value
        else:
            kw[key] = value
    if "concept" in spec.options:
        kw.update(concept_options(cfg.concept, embodied=spec.embodied, insight_set=cfg.insight_set))
    if cfg.agent == "search" or "algorithm" in spec.options:
        kw.update(search)
    elif cfg.actor_search:
        from ponder.agents.search_agent import SearchActor

        prm = search.pop("prm", None)
        kw["actor_search"] = SearchActor(policy, prm, step_params=step, **search)
    return kw


#: options that go to a search (the search agent's own, or each attempt's with --actor-search)
_SEARCH_OPTIONS = frozenset({"n", "prm", "search_tokens", "search_options", "max_steps"})


def _episode_id(task_id: str, seed: int) -> str:
    return f"{task_id}#seed{seed}"


def _run_episode(graph: Any, cfg: RunConfig, task_id: str, policy: Policy) -> dict[str, Any]:
    """Run (or continue) one episode's thread to its end; the episode record, checked complete.

    A thread is finished only when its latest checkpoint has no tasks left. A checkpoint whose
    tasks all saved their writes but whose next checkpoint was never written (a kill between
    the two) shows ``next == ()`` in LangGraph's live view, yet the graph has not reached its
    end: it is continued, and LangGraph applies the saved writes instead of re-running them.
    """
    episode_id = _episode_id(task_id, cfg.seed)
    env = make_env_for(cfg)
    try:
        ctx = AgentContext(
            env=env,
            seed=cfg.seed,
            run_id=cfg.run_id or cfg.run_name,
            episode_id=episode_id,
            artifacts=cfg.run_dir,
        )
        # multi-step agents carry the supersteps they need in their default config
        limit = max(8 + 4 * cfg.trials, int((getattr(graph, "config", None) or {}).get("recursion_limit", 0)))
        config = {"configurable": {"thread_id": episode_id}, "recursion_limit": limit}
        t0 = time.perf_counter()
        snapshot = graph.get_state(config)
        resumed = bool(snapshot.values)
        if snapshot.tasks:  # interrupted mid-episode (tasks left, or done but not yet checkpointed)
            graph.invoke(None, config, context=ctx)
        elif not snapshot.values:
            graph.invoke({"task_id": task_id}, config, context=ctx)
        final = graph.get_state(config)
        problem = _unfinished(final, trials_for(cfg.agent, cfg.trials))
        if problem and resumed:  # a checkpoint that cannot be continued: play the episode again
            log.warning("episode %s: %s; its checkpoints are dropped and it runs again", episode_id, problem)
            graph.checkpointer.delete_thread(episode_id)
            resumed = False
            graph.invoke({"task_id": task_id}, config, context=ctx)
            final = graph.get_state(config)
            problem = _unfinished(final, trials_for(cfg.agent, cfg.trials))
        if problem:
            raise PonderError(
                f"episode {episode_id} of agent {cfg.agent!r} {problem}; this is a bug in the agent graph, "
                "please report it with the run directory"
            )
        seconds = time.perf_counter() - t0
        hidden = _hidden_grades(env, task_id, final.values.get("trials", []), cfg.seed)
    finally:
        env.close()
    return _episode_record(final.values, cfg, task_id, episode_id, policy, seconds, resumed, hidden)


def _hidden_grades(env: TextEnv, task_id: str, trials: list[dict[str, Any]], seed: int) -> list[bool] | None:
    """Each trial's answer graded by the env's hidden tests (HumanEval), after the episode: the
    agent never sees these. None for envs whose step verdict is the grade."""
    if type(env).hidden_grade is TextEnv.hidden_grade:
        return None
    return [bool(env.hidden_grade(task_id, str(t["action"]), seed)) for t in trials]


def _unfinished(snapshot: Any, max_trials: int) -> str | None:
    """Why ``snapshot`` is not a finished episode, or None: the graph reached its end (no tasks
    left) with its trials accounted for (at least one; all of them unless one succeeded)."""
    if snapshot.tasks or snapshot.next:
        return f"stopped before its end (next: {', '.join(snapshot.next) or 'saved writes'})"
    values = snapshot.values
    return trials_problem(list(values.get("trials", [])), bool(values.get("success")), max_trials)


def _episode_record(
    final: dict[str, Any],
    cfg: RunConfig,
    task_id: str,
    episode_id: str,
    policy: Policy,
    seconds: float,
    resumed: bool,
    hidden: list[bool] | None = None,
) -> dict[str, Any]:
    trials = list(final.get("trials", []))
    reflections = list(final.get("reflections", []))
    for i, t in enumerate(trials):
        t = dict(t)
        t["reflection"] = reflections[i] if i < len(reflections) else None
        if hidden is not None:
            t["hidden_success"] = hidden[i]
        trials[i] = t
    searches = list(final.get("searches") or [])
    graded: dict[str, Any] = {}
    # an agent that stops on its own signal (trials with ``stopped``: Self-Refine's critique)
    # never sees the env's grades: they are hidden from it as hidden tests are, and it hands in
    # its last answer, right or not (it may have moved on from a right one)
    own_stop = bool(trials) and "stopped" in trials[-1]
    unseen = hidden if hidden is not None or not own_stop else [bool(t["success"]) for t in trials]
    if unseen is not None:  # grades the agent never saw decide the episode
        # success by trial k = the answer the agent would hand in after k trials passes
        by_trial = (
            [unseen[min(k, len(unseen) - 1)] for k in range(trials_for(cfg.agent, cfg.trials))]
            if unseen
            else []
        )
        graded = {"success": bool(unseen and unseen[-1]), "final_by_trial": by_trial}
        if hidden is not None:  # the env's hidden tests grade the episode; its feedback was visible tests
            graded["internal_success"] = bool(final.get("success"))
    success_of = [t.get("hidden_success", t["success"]) for t in trials]
    first = next((t["trial"] for t, ok in zip(trials, success_of, strict=True) if ok), None)
    return {
        "episode_id": episode_id,
        "run": cfg.run_id or cfg.run_name,
        "agent": cfg.agent,
        "env": cfg.env,
        "task_id": task_id,
        "seed": cfg.seed,
        "model": getattr(policy, "name", "policy"),
        "observation": final.get("observation", ""),
        "task_text": final.get("task_text", ""),
        "success": bool(final.get("success")),
        "first_success_trial": first,
        "feedback": cfg.feedback,
        "oracle": cfg.oracle or any(bool(x.get("oracle")) for x in searches),
        "trials_used": len(trials),
        "trials": trials,
        "prompt_tokens": int(final.get("prompt_tokens", 0)),
        "completion_tokens": int(final.get("completion_tokens", 0)),
        **({"searches": searches} if searches else {}),
        "seconds": round(seconds, 3),
        "resumed": resumed,
        **graded,
    }


def experience_from_episode(episode: dict[str, Any]) -> Any:
    """The episode as an ``Experience`` record (one per run and episode: stable id).

    Its source is the env and it is trusted: the env graded its outcome and wrote its task, so
    a successful one may be shown as a worked example. Records from anywhere else (an import,
    an agent) are untrusted and reach prompts only quoted as data, if at all.
    """
    from ponder.memory import Experience, Provenance

    steps = [
        {
            "action": t["action"],
            "feedback": t["feedback"],
            "success": t["success"],
            **({"reflection": t["reflection"]} if t.get("reflection") else {}),
        }
        for t in episode["trials"]
    ]
    prov = Provenance(
        run_id=episode["run"],
        episode_id=episode["episode_id"],
        env=episode["env"],
        task_id=episode["task_id"],
        agent=episode["agent"],
        model=episode["model"],
        source="env",
        trusted=True,
    )
    rid = hashlib.blake2b(f"{episode['run']}/{episode['episode_id']}/experience".encode(), digest_size=12)
    return Experience(
        task=episode.get("observation") or episode["task_id"],
        trajectory=steps,
        # what the agent could know: with hidden tests (HumanEval), their verdict stays out of memory
        outcome="success" if episode.get("internal_success", episode["success"]) else "failure",
        score=max((t["score"] for t in episode["trials"]), default=0.0),
        tokens=episode["prompt_tokens"] + episode["completion_tokens"],
        key=episode.get("task_text", ""),
        provenance=prov,
        id=rid.hexdigest(),
    )


def _run_all(
    fn: Callable[[str], None], items: list[str], workers: int, progress: bool, *, done: int, total: int
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]episodes"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not progress,
        transient=False,
    )
    with bar, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="episode") as pool:
        task = bar.add_task("episodes", total=total, completed=done)
        futures = [pool.submit(fn, item) for item in items]
        for f in futures:
            f.add_done_callback(lambda _f: bar.advance(task))
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for f in finished:
            if f.exception() is not None:
                for g in futures:
                    g.cancel()
                raise f.exception()  # type: ignore[misc]
