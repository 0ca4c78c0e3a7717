"""What every algorithm shares: registry, signature, tree, chosen path, budget, a real env."""

from __future__ import annotations

import doctest
import importlib
import inspect
import itertools

import networkx as nx
import pytest

from ponder.environments import make
from ponder.errors import UnknownName
from ponder.models import ScriptedPolicy
from ponder.models.prm import FunctionPRM
from ponder.search import ALGORITHMS, SearchResult, algorithm, majority_vote
from ponder.search.base import join_steps, split_steps
from ponder.search.budget import Budget
from ponder.search.lats import VALUE_PREFIX
from ponder.search.prompts import problem_for_task

NAMES = ["majority", "best_of_n", "weighted_best_of_n", "beam", "dvts", "mcts", "lats", "tot_bfs", "tot_dfs"]
MODULES = ["self_consistency", "best_of_n", "beam", "dvts", "mcts", "lats", "tot"]

TABLE = {
    (): ["2 + 3 = 5.", "2 + 3 = 6.", "3 + 2 = 5.", "Answer: 4"],
    ("2 + 3 = 5.",): ["Answer: 5", "So 5."],
    ("2 + 3 = 6.",): ["Answer: 6"],
    ("3 + 2 = 5.",): ["Answer: 5"],
}
SCORES = {
    "2 + 3 = 5.": 0.8,
    "3 + 2 = 5.": 0.7,
    "2 + 3 = 6.": 0.3,
    "Answer: 5": 0.9,
    "Answer: 6": 0.2,
    "Answer: 4": 0.1,
}


def whole_or_step():
    """A script for every method: a step continues with the rest of a solution, so ``complete``
    gets whole solutions and ``expand`` (which stops at the separator) gets one step."""
    seen: dict[tuple[str, ...], int] = {}

    def reply(prompt):
        done = tuple(split_steps(prompt.assistant_prefix))
        options = TABLE.get(done, ["Answer: 0"])
        seen[done] = seen.get(done, -1) + 1
        step = options[seen[done] % len(options)]
        return step if step.startswith("Answer") else step + "\n\nAnswer: 5"

    return reply


def evaluate(text: str) -> tuple[bool, str]:
    return text.strip().endswith("Answer: 5"), "checked"


def test_registry_names_and_signature():
    assert list(ALGORITHMS) == NAMES
    for name, fn in ALGORITHMS.items():
        assert algorithm(name) is fn
        n = inspect.signature(fn).parameters["n"]
        # lats' n is its expansion width, 5 as in the paper; the others' default is 8
        assert n.kind is inspect.Parameter.KEYWORD_ONLY and n.default == (5 if name == "lats" else 8), name
    with pytest.raises(UnknownName, match="beam"):
        algorithm("beam_search")
    assert majority_vote(["4", "5", "4"]) == "4"


@pytest.mark.parametrize("name", NAMES)
def test_every_algorithm_builds_a_marked_tree_that_draws(make_problem, name, tmp_path):
    problem = make_problem(whole_or_step(), SCORES, evaluate=evaluate, max_steps=3)
    result = ALGORITHMS[name](problem, n=4)
    assert isinstance(result, SearchResult) and result.algorithm == name
    tree = result.tree
    assert isinstance(tree.graph, nx.DiGraph) and nx.is_tree(tree.graph)
    chosen = [x for x in tree.graph if tree[x]["chosen"]]
    assert chosen == tree.path(chosen[-1]) and len(chosen) == len(result.steps) + 1
    assert result.text == join_steps(result.steps) and result.steps == tree.steps(chosen[-1])
    assert result.answer == "5"
    for x in tree.graph:
        if x:
            assert tree[x]["tokens"] > 0 and isinstance(tree[x]["terminal"], bool)
            # majority needs no PRM; lats values steps with the policy itself (value="lm")
            assert (tree[x]["score"] is None) == (name in ("majority", "lats"))
            if tree[x]["terminal"]:
                assert tree[x]["answer"] == problem.answer(tree.steps(x))
    assert result.candidates and all(
        {"steps", "answer", "score", "node"} <= set(c) for c in result.candidates
    )
    assert all(tree[c["node"]]["terminal"] for c in result.candidates)
    png = tree.draw(tmp_path / "t.png")
    assert png.stat().st_size > 1000
    assert result.to_dict()["tree"]["nodes"]


@pytest.mark.parametrize("name", NAMES)
def test_a_spent_budget_stops_every_algorithm(make_problem, name):
    problem = make_problem(whole_or_step(), SCORES, evaluate=evaluate, budget=Budget(max_generated_tokens=1))
    result = ALGORITHMS[name](problem, n=4)
    assert result.budget["exhausted"] and result.budget["policy_calls"] == 1
    assert isinstance(result, SearchResult)


@pytest.mark.parametrize("name", ["beam", "dvts", "lats", "weighted_best_of_n"])
def test_on_the_math_env(name):
    env = make("math", level=1, num_tasks=1)
    task = env.tasks["math/L1/0"]
    a, b = (int(x) for x in task.question.removeprefix("What is ").rstrip("?").split(" + "))
    right, wrong = a + b, a + b + 1

    turns = itertools.count()

    def reply(prompt):
        if prompt.assistant_prefix == VALUE_PREFIX:  # lats asks the policy to rate a step
            return "7"
        done = split_steps(prompt.assistant_prefix)
        if done:
            return "Answer: " + done[-1].split("= ")[1].rstrip(".")
        first = f"{a} + {b} = {wrong if next(turns) % 2 == 0 else right}."
        # expand() stops at the separator (one step); complete() gets the whole solution
        return f"{first}\n\nAnswer: {first.split('= ')[1].rstrip('.')}"

    # a rule PRM that knows the sum
    prm = FunctionPRM(lambda q, steps: 1.0 if str(right) in steps[-1] else 0.1)
    policy = ScriptedPolicy(reply)
    problem = problem_for_task(env, "math/L1/0", policy, prm)
    result = ALGORITHMS[name](problem, n=4)
    assert result.answer == str(right)
    assert problem.evaluate is not None and problem.evaluate(result.text)[0]
    # a step with a number in it ("9 + 4 = 13.") does not end the solution
    first = result.tree.children(0)[0]
    assert result.tree[first]["step"].endswith(".") and not result.tree[first]["terminal"]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module):
    mod = importlib.import_module(f"ponder.search.{module}")
    assert mod.__doc__ and "Example" in mod.__doc__
    failed, tried = doctest.testmod(mod)
    assert tried and not failed
