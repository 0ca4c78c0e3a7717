"""TextWorldEnv on real generated games: winning, text cleaning, seeding, the disk cache, errors."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from ponder.environments import check_env
from ponder.environments import textworld as tw_env
from ponder.environments.textworld import LEVELS, GameSpec, TextWorldEnv, clean_text, game_spec
from ponder.errors import ConfigError, DependencyNotInstalled, EnvError, UnknownName

pytest.importorskip("textworld")

L1, L3 = "textworld/L1/0", "textworld/L3/0"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("textworld-cache")


@pytest.fixture(scope="module")
def env(cache):
    env = TextWorldEnv(level=[1, 3], num_games=2, seed=0, cache_dir=cache)
    yield env
    env.close()


def play(env: TextWorldEnv, task_id: str, commands: list[str]) -> tuple[list[tuple], dict]:
    obs, info = env.reset(options={"task_id": task_id})
    steps = []
    for command in commands:
        assert command in info["admissible_actions"], (command, info["admissible_actions"])
        obs, reward, terminated, truncated, info = env.step(command)
        steps.append((obs, reward, terminated, truncated))
    return steps, info


def test_task_ids_are_stable_and_interleave_levels(env):
    assert env.task_ids() == ["textworld/L1/0", "textworld/L3/0", "textworld/L1/1", "textworld/L3/1"]
    assert TextWorldEnv(level=[1, 3], num_games=2, cache_dir="unused").task_ids() == env.task_ids()


def test_the_module_uses_the_real_package():
    assert not sys.modules["textworld"].__file__.endswith(str(Path("environments", "textworld.py")))


@pytest.mark.parametrize("task_id", [L1, L3])
def test_walkthrough_wins(env, task_id):
    commands = env.walkthrough(task_id)
    assert len(commands) >= (1 if task_id == L1 else 3)
    steps, info = play(env, task_id, commands)
    assert [s[2] for s in steps] == [False] * (len(steps) - 1) + [True]
    assert not any(s[3] for s in steps)
    assert info["success"] and info["score"] == 100.0 and info["raw_score"] == info["max_score"] >= 1
    assert sum(s[1] for s in steps) == info["max_score"]
    assert "*** The End ***" in steps[-1][0] and "RESTART" not in steps[-1][0]
    with pytest.raises(EnvError):
        env.step("look")


def test_first_observation_is_clean_and_holds_the_objective(env):
    obs, info = env.reset(options={"task_id": L3})
    assert "$$" not in obs and "_____" not in obs and obs == obs.strip()
    assert obs.startswith(info["objective"]) and env.task_text(obs) == info["objective"]
    assert "-= " in obs  # the starting room follows the objective
    assert info["admissible_actions"] and env.walkthrough(L3)[0] in info["admissible_actions"]
    for key in ("description", "inventory", "feedback", "task_id"):
        assert isinstance(info[key], str)
    assert (info["success"], info["score"], info["raw_score"]) == (False, 0.0, 0)
    obs, reward, terminated, truncated, info = env.step("look")
    assert obs.startswith("-= ") and not obs.endswith(">") and "=-0/" not in obs
    assert (reward, terminated, truncated) == (0.0, False, False) and info["feedback"] == obs


def test_admissible_actions_are_refreshed(env):
    _, info = env.reset(options={"task_id": L3})
    first = env.walkthrough(L3)[0]
    _, _, _, _, after = env.step(first)
    assert after["admissible_actions"] != info["admissible_actions"]


def test_check_env(env):
    check_env(env)


def test_same_seed_same_game_other_index_other_game(env, tmp_path):
    obs, _ = env.reset(options={"task_id": L1})
    fresh = TextWorldEnv(level=1, num_games=1, seed=0, cache_dir=tmp_path)
    try:
        assert fresh.reset(options={"task_id": L1})[0] == obs  # regenerated from scratch
        assert fresh.walkthrough(L1) == env.walkthrough(L1)
    finally:
        fresh.close()
    other, _ = env.reset(options={"task_id": "textworld/L1/1"})
    assert other != obs
    assert game_spec(1, 1, 0) != game_spec(0, 1, 0)


def test_cache_is_reused_without_generating(env, cache, monkeypatch):
    path = env.game_file(L1)
    mtime = path.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("a cached game was regenerated")

    monkeypatch.setattr(tw_env, "generate_game", boom)
    start = time.perf_counter()
    again = TextWorldEnv(level=[1, 3], num_games=2, seed=0, cache_dir=cache)
    try:
        _, info = again.reset(options={"task_id": L1})
        elapsed = time.perf_counter() - start
    finally:
        again.close()
    assert elapsed < 3.0 and info["admissible_actions"] and path.stat().st_mtime_ns == mtime
    # one whole folder per game, named by its parameters; no temporary folders left behind
    folders = sorted(p.name for p in cache.iterdir())
    assert not [f for f in folders if f.startswith(".")]
    assert {f.split("-")[0] for f in folders} == {"w2", "w4"} and len(folders) == len(set(folders))
    assert all((cache / f / "game.z8").is_file() and (cache / f / "game.json").is_file() for f in folders)


def test_cache_key_covers_the_parameters():
    spec = GameSpec(2, 3, 1, seed=7)
    keys = {
        spec.key("1.7.0"),
        spec.key("1.7.1"),
        GameSpec(3, 3, 1, 7).key("1.7.0"),
        GameSpec(2, 4, 1, 7).key("1.7.0"),
        GameSpec(2, 3, 2, 7).key("1.7.0"),
        GameSpec(2, 3, 1, 8).key("1.7.0"),
    }
    assert len(keys) == 6
    assert game_spec(0, 1, 0).key("1.7.0") != game_spec(0, 2, 0).key("1.7.0")
    assert game_spec(0, 1, 0, (9, 9, 9)).world_size == 9 and game_spec(0, 1, 0).world_size == LEVELS[1][0]


def test_a_crash_mid_generation_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    def crash(spec, folder):
        (Path(folder) / "game.json").write_text("{")  # half a game
        raise KeyboardInterrupt

    monkeypatch.setattr(tw_env, "generate_game", crash)
    env = TextWorldEnv(level=1, num_games=1, cache_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        env.reset(options={"task_id": L1})
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_follows_ponder_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PONDER_CACHE", str(tmp_path))
    assert TextWorldEnv().cache_dir == tmp_path / "textworld"
    monkeypatch.delenv("PONDER_CACHE")
    assert TextWorldEnv().cache_dir == Path.home() / ".cache" / "ponder" / "textworld"


def test_generation_is_lazy(tmp_path):
    env = TextWorldEnv(level=5, num_games=3, cache_dir=tmp_path / "cache")
    assert len(env.task_ids()) == 3 and not (tmp_path / "cache").exists()


def test_overrides_apply_to_every_level(tmp_path):
    env = TextWorldEnv(level=[1, 2], num_games=1, quest_length=4, cache_dir=tmp_path)
    assert [s.quest_length for s in env.specs.values()] == [4, 4]
    assert [s.world_size for s in env.specs.values()] == [LEVELS[1][0], LEVELS[2][0]]


def test_truncation_at_max_steps(cache):
    env = TextWorldEnv(level=1, num_games=1, max_steps=3, cache_dir=cache)
    try:
        env.reset(options={"task_id": L1})
        ends = [env.step("look")[2:4] for _ in range(3)]
        assert ends == [(False, False), (False, False), (False, True)]
        with pytest.raises(EnvError):
            env.step("look")
    finally:
        env.close()


def test_interpreter_commands_are_refused(env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # frotz writes save and script files to the working directory
    env.reset(options={"task_id": L1})
    for command in ("save", "restore", "script", "look. quit", "restart", "tw-trace-actions"):
        obs, reward, terminated, _, info = env.step(command)
        assert "disabled" in obs and reward == 0.0 and not terminated and info["admissible_actions"]
    assert list(tmp_path.iterdir()) == []
    _, info = play(env, L1, env.walkthrough(L1))  # the game still tracks its state
    assert info["success"]


def test_multiline_action_is_one_command(env):
    env.reset(options={"task_id": L1})
    obs, *_ = env.step("look\nquit")
    assert "disabled" not in obs and "yes or no" not in obs


def test_close_is_idempotent_and_ends_the_episode(cache):
    env = TextWorldEnv(level=1, num_games=1, cache_dir=cache)
    env.reset(options={"task_id": L1})
    env.close()
    env.close()
    with pytest.raises(EnvError):
        env.step("look")
    assert env.reset(options={"task_id": L1})[0]
    env.close()


def test_errors(env):
    with pytest.raises(UnknownName, match="task_ids"):
        env.reset(options={"task_id": "textworld/L9/0"})
    with pytest.raises(UnknownName):
        env.walkthrough("textworld/L1/99")
    for bad in (0, 6, [], [1, 7]):
        with pytest.raises(ConfigError, match="level"):
            TextWorldEnv(level=bad)
    with pytest.raises(ConfigError, match="num_games"):
        TextWorldEnv(num_games=0)
    with pytest.raises(ConfigError, match="world_size"):
        TextWorldEnv(world_size=0)


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "textworld", None)
    with pytest.raises(DependencyNotInstalled, match=r"ponder\[textworld\]"):
        TextWorldEnv()


def test_clean_text():
    raw = "\n  ___\n |_ \\$$\n\nWelcome!\n\n\n\n      *** The End ***\n\nWould you like to RESTART?\n>    -= Attic =-1/2"
    assert clean_text(raw) == "Welcome!\n\n*** The End ***"
