"""``check_env``: does an env keep the TextEnv contract?

Run over every registered env in the tests, like Gymnasium's ``check_env``.

Example:
    >>> from ponder.environments import check_env, make
    >>> check_env(make("math", num_tasks=4))
"""

from __future__ import annotations

from ponder.environments.base import TextEnv
from ponder.errors import EnvError

__all__ = ["check_env"]

_REQUIRED_INFO = ("success", "score", "feedback", "task_id")


def _fail(env: TextEnv, what: str) -> EnvError:
    return EnvError(f"env {env.name!r} breaks the TextEnv contract: {what}")


def check_env(env: TextEnv, *, action: str = "I do not know.", max_steps: int = 50) -> None:
    """Raise ``EnvError`` naming the first broken rule; return None if the env is sound.

    Checks: ``task_ids`` is a non-empty list of unique strings; ``reset`` with a seed and
    a task id returns ``(str, dict)`` with the required info keys and is reproducible;
    ``step`` returns the 5-tuple with the right types; ``step`` after the end raises
    ``EnvError``; an unknown task id is refused.
    """
    ids = env.task_ids()
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise _fail(env, "task_ids() must return a non-empty list of str")
    if len(set(ids)) != len(ids):
        raise _fail(env, "task_ids() has duplicates")
    tid = ids[0]
    obs1, info1 = env.reset(seed=123, options={"task_id": tid})
    if not isinstance(obs1, str) or not isinstance(info1, dict):
        raise _fail(env, "reset() must return (str, dict)")
    missing = [k for k in _REQUIRED_INFO if k not in info1]
    if missing:
        raise _fail(env, f"reset() info lacks {missing}")
    obs2, _ = env.reset(seed=123, options={"task_id": tid})
    if obs1 != obs2:
        raise _fail(env, "reset() with the same seed and task_id gave different observations")
    if not env.observation_space.contains(obs1):
        raise _fail(env, "the observation is not in observation_space")

    done, steps = False, 0
    while not done and steps < max_steps:
        out = env.step(action)
        if not (isinstance(out, tuple) and len(out) == 5):
            raise _fail(env, "step() must return (obs, reward, terminated, truncated, info)")
        obs, reward, terminated, truncated, info = out
        if not isinstance(obs, str) or not isinstance(info, dict):
            raise _fail(env, "step() obs must be str and info a dict")
        if (
            not isinstance(reward, float)
            or not isinstance(terminated, bool)
            or not isinstance(truncated, bool)
        ):
            raise _fail(env, "step() reward must be float and terminated/truncated bool")
        missing = [k for k in _REQUIRED_INFO if k not in info]
        if missing:
            raise _fail(env, f"step() info lacks {missing}")
        if not isinstance(info["success"], bool):
            raise _fail(env, "info['success'] must be a bool")
        done = terminated or truncated
        steps += 1
        if env.single_step and not done:
            raise _fail(env, "a single_step env must end the episode after one step")
    if done:
        try:
            env.step(action)
        except EnvError:
            pass
        else:
            raise _fail(env, "step() after the episode ended must raise EnvError")
    try:
        env.reset(options={"task_id": "\x00no-such-task"})
    except KeyError:
        pass
    else:
        raise _fail(env, "reset() accepted an unknown task_id")
