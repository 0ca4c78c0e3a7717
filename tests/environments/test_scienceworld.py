"""ScienceWorldEnv against the real simulator: contract, gold runs, splits, errors, JVM hygiene."""

from __future__ import annotations

import gc
import shutil
import sys

import pytest

from ponder.environments import check_env
from ponder.environments.scienceworld import ScienceWorldEnv, java_children, resolve_task, task_names
from ponder.errors import ConfigError, DependencyNotInstalled, EnvError, UnknownName

pytest.importorskip("scienceworld")
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="ScienceWorld needs java on PATH")

BOIL, PLANT = "scienceworld/boil/0", "scienceworld/find-plant/0"


@pytest.fixture(scope="module")
def env():
    e = ScienceWorldEnv(tasks=["boil", "find-plant"], variations=2)
    yield e
    e.close()


def run_gold(env: ScienceWorldEnv, task_id: str) -> tuple[float, list[float], dict]:
    """Follow the walkthrough; return the starting score, the rewards and the last info."""
    actions = env.walkthrough(task_id)
    _, info = env.reset(options={"task_id": task_id})
    start, rewards = info["score"], []
    for action in actions:
        _, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        if terminated or truncated:
            break
    assert terminated and not truncated, f"{task_id} did not finish in {len(actions)} gold actions"
    return start, rewards, info


def test_names_resolve_from_the_package_names_ids_and_unique_prefixes():
    assert len(task_names()) == 30 and task_names()[0] == "boil"
    assert resolve_task("boil") == "boil" and resolve_task("1-3") == "freeze"
    assert resolve_task("Matter Changes of State (Boiling)") == "boil"
    assert resolve_task("power-component") == "power-component"  # exact beats a longer name
    assert resolve_task("renewable") == "power-component-renewable-vs-nonrenewable-energy"
    with pytest.raises(UnknownName, match="did you mean: boil"):
        ScienceWorldEnv(tasks="boill")
    with pytest.raises(UnknownName, match="ambiguous"):
        resolve_task("find")


def test_bad_options_are_refused_before_any_jvm_starts():
    for kw in (
        {"split": "validation"},
        {"simplifications": "easy,flying"},
        {"simplifications": "noElectricalAction", "tasks": "test-conductivity"},
        {"variations": 0},
        {"max_steps": 0},
        {"tasks": []},
        {"jar_path": "/no/such.jar"},
    ):
        with pytest.raises(ConfigError) as e:
            ScienceWorldEnv(**kw)
        assert "\n" not in str(e.value)
    assert ScienceWorldEnv(simplifications=" openDoors, teleportAction ").simplifications == (
        "openDoors,teleportAction"
    )


def test_missing_java_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    e = ScienceWorldEnv(tasks="boil")
    with pytest.raises(DependencyNotInstalled, match="Java") as err:
        e.task_ids()
    assert "\n" not in str(err.value) and "apt install openjdk-17-jre-headless" in str(err.value)
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\necho 'java version \"1.7.0_80\"' >&2\n")
    java.chmod(0o755)
    with pytest.raises(DependencyNotInstalled, match="is version 7;"):
        e.task_ids()
    e.close()


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "scienceworld", None)
    task_names.cache_clear()
    try:
        with pytest.raises(DependencyNotInstalled, match=r"ponder\[scienceworld\]"):
            ScienceWorldEnv(tasks="boil")
    finally:
        task_names.cache_clear()


@needs_java
def test_check_env(env):
    check_env(env, action="look around", max_steps=3)


@needs_java
def test_task_ids_interleave_tasks_and_cap_variations(env):
    assert env.task_ids() == [BOIL, PLANT, "scienceworld/boil/1", "scienceworld/find-plant/1"]


@needs_java
def test_splits_are_the_packages(env):
    train, dev, test = (env.split_variations("boil", s) for s in ("train", "dev", "test"))
    assert not set(train) & set(dev) and not set(dev) & set(test) and not set(train) & set(test)
    sim = env.simulator
    for task in ("boil", "find-plant"):
        sim.load(task, 0, "")  # a real load: the package's getters then read the loaded task
        assert env.split_variations(task, "train") == sim.get_variations_train()
        assert env.split_variations(task, "dev") == sim.get_variations_dev()
        assert env.split_variations(task, "test") == sim.get_variations_test()
    assert sorted(train + dev + test) == list(range(sim.get_max_variations("boil")))


@needs_java
def test_first_observation_has_the_task_and_the_room(env):
    obs, info = env.reset(seed=0, options={"task_id": BOIL})
    assert obs.startswith("Your task is to boil water.") and "\n\nThis room is called" in obs
    assert env.task_text(obs) == info["task_description"] and "\n" not in env.task_text(obs)
    assert info["score"] == 0.0 and info["moves"] == 0 and not info["success"] and not info["failed"]


@needs_java
def test_boil_walkthrough_scores_100(env):
    start, rewards, info = run_gold(env, BOIL)
    assert start == 0.0 and sum(rewards) == 100.0
    assert info["success"] and info["score"] == 100.0 and not info["failed"]


@needs_java
def test_find_plant_walkthrough_scores_100_from_a_start_of_8(env):
    start, rewards, info = run_gold(env, PLANT)
    assert start == 8.0 and start + sum(rewards) == 100.0
    assert info["success"] and info["score"] == 100.0


@needs_java
def test_admissible_actions_are_accepted_and_junk_is_harmless(env):
    _, info = env.reset(options={"task_id": BOIL})
    actions = info["admissible_actions"]
    assert len(actions) > 50 and len(actions) == len(set(actions)) and "go to kitchen" in actions
    obs, reward, terminated, _, info = env.step("dance with the stove")
    assert obs == "No known action matches that input." and reward == 0.0 and not terminated
    assert info["moves"] == 0 and info["feedback"] == obs
    obs, *_, info = env.step("go to kitchen")
    assert obs == "You move to the kitchen." and info["moves"] == 1
    assert "pick up thermometer" in info["admissible_actions"]


@needs_java
def test_focusing_on_the_wrong_thing_fails_the_task_with_score_0(env):
    env.reset(options={"task_id": PLANT})
    _, reward, terminated, _, info = env.step("focus on agent")
    assert terminated and info["failed"] and info["score"] == 0.0 and reward == -8.0
    with pytest.raises(EnvError):
        env.step("look around")


@needs_java
def test_truncates_at_max_steps(env, monkeypatch):
    monkeypatch.setattr(env, "max_steps", 3)
    env.reset(options={"task_id": BOIL})
    ends = [env.step("look around")[2:4] for _ in range(3)]
    assert ends == [(False, False), (False, False), (False, True)]


@needs_java
def test_close_stops_every_jvm_and_is_idempotent():
    before = java_children()
    dev = ScienceWorldEnv(tasks="boil", split="dev")
    test = ScienceWorldEnv(tasks=["boil", "melt"], split="test", variations=3)
    assert dev.task_ids() == [f"scienceworld/boil/{v}" for v in range(14, 21)]
    assert (
        test.task_ids()[:2] == ["scienceworld/boil/21", "scienceworld/melt/21"] and len(test.task_ids()) == 6
    )
    dropped = ScienceWorldEnv(tasks="freeze", variations=1)
    dropped.reset()
    assert len(java_children() - before) == 3  # one JVM per env
    dev.close()
    test.close()
    test.close()
    del dropped
    gc.collect()  # the safety net: a collected env stops its JVM
    assert java_children() - before == set()
    with pytest.raises(EnvError):
        test.step("look around")
