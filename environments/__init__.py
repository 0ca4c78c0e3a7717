"""Text environments with the Gymnasium contract (``ponder.environments``).

Example:
    >>> from ponder.environments import make
    >>> env = make("math", level=2, num_tasks=10, seed=1)
    >>> obs, info = env.reset(options={"task_id": env.task_ids()[0]})
"""

from ponder.environments.base import AnyText, StepResult, TextEnv
from ponder.environments.checker import check_env
from ponder.environments.registry import EnvSpec, list_envs, make, register, spec

__all__ = [
    "AnyText",
    "EnvSpec",
    "StepResult",
    "TextEnv",
    "check_env",
    "list_envs",
    "make",
    "register",
    "spec",
]

register(
    "math",
    "ponder.environments.math_tasks:MathEnv",
    description="procedurally generated arithmetic and word problems, levels 1-5, exact-answer verifier",
)
register(
    "dataset",
    "ponder.environments.dataset:DatasetEnv",
    description="your own question-answer file (JSONL, CSV, Parquet, saved HF dataset): seeded train/test split, a grader you pick",
)
register(
    "humaneval",
    "ponder.environments.humaneval:HumanEvalEnv",
    description="the 164 HumanEval problems; code runs against the tests in an isolated sandbox",
)
register(
    "scienceworld",
    "ponder.environments.scienceworld:ScienceWorldEnv",
    description="the 30 ScienceWorld science tasks (7,207 variations, train/dev/test splits) in a Java text simulator",
)
register(
    "textworld",
    "ponder.environments.textworld:TextWorldEnv",
    description="TextWorld text adventures generated offline from a seed, levels 1-5, cached on disk",
)
register(
    "toy-rooms",
    "ponder.environments.toy_rooms:ToyRoomsEnv",
    description="three tiny multi-step tasks with fixed rules: the fast fake for embodied-agent tests",
)
register(
    "reasoning-gym",
    "ponder.environments.reasoning_gym_env:ReasoningGymEnv",
    description="reasoning-gym's procedural tasks (countdown, puzzle24, arithmetic, word sorting, ...), its own scorers",
)
