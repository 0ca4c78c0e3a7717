"""The paper-faithful parts on the real SmolLM2 policy: PUCT priors from its log-probabilities,
LATS' LM value read from its own ratings, and the budget held, in one small run."""

from __future__ import annotations

import pytest

from ponder.environments import make
from ponder.models.prm import FunctionPRM
from ponder.models.types import SamplingParams
from ponder.search import lats, mcts
from ponder.search.budget import Budget
from ponder.search.prompts import problem_for_task


@pytest.mark.real_model
def test_puct_priors_and_lm_values_on_smollm2():
    from ponder.models.local import LocalPolicy

    policy = LocalPolicy(device="cpu")
    env = make("math", level=2, num_tasks=1, seed=0)
    step = SamplingParams(max_tokens=24, temperature=1.0)

    def problem(budget: int):
        return problem_for_task(
            env, "math/L2/0", policy, FunctionPRM(lambda q, s: 0.5), params=step, max_steps=3,
            budget=Budget(max_generated_tokens=budget),
        )  # fmt: skip

    p = problem(120)
    result = mcts(p, n=3, iterations=50, selection="puct")
    kids = result.tree.children(0)
    assert kids and all(result.tree[x].get("logprob") is not None for x in kids)
    priors = [result.tree[x]["prior"] for x in kids]
    assert sum(priors) == pytest.approx(1.0) and len(set(priors)) > 1  # the policy's own preferences
    assert result.budget["generated_tokens"] <= 120 + 24 - 1 and not result.oracle

    p = problem(200)
    result = lats(p, n=3, iterations=50, use_env_reward=False, value_samples=2)
    rated = [x for x in result.tree.graph if result.tree[x].get("lm_value") is not None]
    assert rated, "SmolLM2 gave no readable rating after the value prefix"
    assert all(0.1 <= result.tree[x]["lm_value"] <= 1.0 for x in rated)
    assert result.budget["generated_tokens"] <= 200 + 24 - 1 and not result.oracle
