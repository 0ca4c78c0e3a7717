"""Embodied envs used from several threads at once, as ``ponder run --concurrency N`` uses them.

Every env instance lives in one thread; the instances run at the same time. TextWorld shares
tatsu parsers across the process (see ``_PARSER_LOCK`` in ``ponder.environments.textworld``):
without the lock these tests fail with ``IndexError: pop from empty list`` or a bogus parse error.
ScienceWorld starts one JVM per env, so nothing is shared; the test checks that it stays so.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ponder.environments.base import TextEnv

THREADS = 4


def in_threads(n: int, work: Callable[[int, threading.Barrier], Any]) -> list[Any]:
    """Run ``work(i, barrier)`` in ``n`` threads; the results in order, or the first error re-raised."""
    barrier = threading.Barrier(n, timeout=300)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = work(i, barrier)
        except BaseException as e:
            errors.append(e)
            barrier.abort()  # the others stop waiting instead of timing out

    threads = [threading.Thread(target=run, args=(i,), name=f"env-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]
    return results


def wander(env: TextEnv, task_id: str, steps: int) -> list[tuple]:
    """Reset, take the admissible actions round-robin, reset again when the episode ends.

    A deterministic trajectory of exactly ``steps`` steps (and as many resets as it takes).
    The env's guarded verbs (ScienceWorld's ``focus``, which ends the episode) are left out.
    """
    obs, info = env.reset(options={"task_id": task_id})
    out: list[tuple] = [(obs, tuple(sorted(info["admissible_actions"])))]
    for k in range(steps):
        actions = [a for a in sorted(info["admissible_actions"]) if a.split()[0] not in env.guarded_verbs]
        actions = actions or ["look"]
        obs, reward, terminated, truncated, info = env.step(actions[k % len(actions)])
        out.append((obs, float(reward), terminated, truncated, info["score"]))
        if terminated or truncated:
            obs, info = env.reset(options={"task_id": task_id})
            out.append((obs, tuple(sorted(info["admissible_actions"]))))
    return out


# --- TextWorld ------------------------------------------------------------------------
pytest.importorskip("textworld")


def textworld_session(cache: Path, i: int, barrier: threading.Barrier | None) -> list[Any]:
    """What one thread does: generate and play two uncached games, go back to the first, win it.

    The barriers line the threads up at the calls that used to race: generation (every
    thread builds a game at once) and starting a game (the game's logic is parsed).
    """
    from ponder.environments.textworld import TextWorldEnv

    def sync() -> None:
        if barrier is not None:
            barrier.wait()

    env = TextWorldEnv(level=[1, 2], num_games=THREADS, seed=7, cache_dir=cache, max_steps=None)
    first, second = env.task_ids()[2 * i], env.task_ids()[2 * i + 1]  # L1/i and L2/i: 8 games in all
    try:
        log: list[Any] = []
        sync()
        log.append(wander(env, first, 25))  # generates L1/i while the others generate theirs
        sync()
        log.append(wander(env, second, 25))  # L2/i: generation again, and a second logic parse
        sync()
        log.append(wander(env, first, 25))  # back to the first game: textworld.start once more
        walk = env.walkthrough(first)
        env.reset(options={"task_id": first})
        for command in walk:
            *_, info = env.step(command)
        log.append((walk, info["success"], info["score"]))
        return log
    finally:
        env.close()


def test_textworld_envs_generate_reset_and_step_in_parallel_threads(tmp_path):
    """4 envs in 4 threads: 8 uncached games generated at once, 75 steps each, then a win.

    The same sessions replayed one at a time over the same cache give the same trajectories,
    so the threads neither crashed nor leaked state into each other.
    """
    cache = tmp_path / "games"
    parallel = in_threads(THREADS, lambda i, barrier: textworld_session(cache, i, barrier))
    assert len(list(cache.iterdir())) == 2 * THREADS  # one whole folder per game, no temp left
    for i, log in enumerate(parallel):
        assert log[-1][1:] == (True, 100.0), f"thread {i} did not win its game"
        assert sum(len(trajectory) for trajectory in log[:3]) > 75
        assert textworld_session(cache, i, None) == log  # serial replay, cached games


def test_parallel_generation_makes_the_same_games_as_serial(tmp_path):
    """Games generated in threads at once equal those generated one by one (a seed makes a game)."""
    from ponder.environments.textworld import TextWorldEnv

    def game_json(cache: Path, task_id: str) -> dict:
        env = TextWorldEnv(level=1, num_games=THREADS, seed=3, cache_dir=cache)
        data = json.loads(env.game_file(task_id).with_suffix(".json").read_text())
        return {k: data[k] for k in ("world", "quests", "infos")}

    ids = TextWorldEnv(level=1, num_games=THREADS, seed=3, cache_dir="unused").task_ids()

    def generate(i: int, barrier: threading.Barrier) -> dict:
        barrier.wait()  # every thread starts generating at the same moment
        return game_json(tmp_path / "parallel", ids[i])

    at_once = in_threads(THREADS, generate)
    assert at_once == [game_json(tmp_path / "serial", t) for t in ids]


# --- ScienceWorld ---------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("java") is None, reason="ScienceWorld needs java on PATH")
def test_scienceworld_envs_step_in_parallel_threads():
    """3 envs (3 JVMs) started, reset and stepped at once behave as each does alone."""
    pytest.importorskip("scienceworld")
    from ponder.environments.scienceworld import ScienceWorldEnv, java_children

    before = java_children()
    tasks = ["scienceworld/boil/0", "scienceworld/find-plant/0", "scienceworld/boil/1"]

    def session(i: int, barrier: threading.Barrier | None) -> list[tuple]:
        env = ScienceWorldEnv(tasks=["boil", "find-plant"], variations=2)
        try:
            if barrier is not None:
                barrier.wait()  # the JVMs start together
            return wander(env, tasks[i], 12)
        finally:
            env.close()

    parallel = in_threads(len(tasks), session)
    assert parallel == [session(i, None) for i in range(len(tasks))]
    assert java_children() <= before
