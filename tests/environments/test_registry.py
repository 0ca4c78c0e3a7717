import pytest

from ponder.environments import TextEnv, check_env, list_envs, make, register
from ponder.errors import ConfigError, DependencyNotInstalled, EnvError, UnknownName


@pytest.mark.parametrize("name", sorted(list_envs()))
def test_check_env_over_every_registered_env(name):
    from ponder.environments.sandbox import namespaces_available

    if name == "humaneval" and not namespaces_available():  # pragma: no cover - CI runs as root
        pytest.skip("HumanEval grades only in the namespace sandbox (root and unshare)")
    try:
        env = make(name)
    except DependencyNotInstalled as e:  # pragma: no cover - all extras are installed by make test
        pytest.fail(str(e))
    try:
        check_env(env)
    finally:
        env.close()


def test_unknown_env_names_the_choices():
    with pytest.raises(UnknownName, match=r"choose one of: .*math"):
        make("maths")


def test_bad_kwargs_are_a_config_error():
    with pytest.raises(ConfigError, match="bad options for env 'math'"):
        make("math", colour="blue")


class _Broken(TextEnv):
    name = "broken"
    single_step = True

    def task_ids(self):
        return ["t"]

    def _reset_task(self, task_id):
        return "hi", {}

    def _step(self, action):
        return "bye", 0.0, False, False, {}  # never terminates: breaks single_step


def test_check_env_catches_a_broken_env():
    register("broken-test", _Broken)
    with pytest.raises(EnvError, match="single_step"):
        check_env(make("broken-test"))
