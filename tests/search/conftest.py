"""Scripted policies and table PRMs for the search tests (no model is loaded)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from ponder.models import ScriptedPolicy
from ponder.models.prm import FunctionPRM
from ponder.models.types import Completion, Prompt, SamplingParams
from ponder.search.base import SearchProblem, split_steps

QUESTION = "What is 2 + 3?"


class StepScript:
    """Replies one step at a time, chosen by the steps written so far (``prompt.assistant_prefix``).

    ``table[steps_so_far]`` lists the replies for that partial solution, handed out in turn
    (each sample takes the next one, cycling). A step that does not start with ``Answer``
    continues: it is followed by the separator, where the policy stops.
    """

    def __init__(self, table: Mapping[tuple[str, ...], Sequence[str]], default: str = "Answer: 0"):
        self.table = {k: list(v) for k, v in table.items()}
        self.default = default
        self.seen: Counter[tuple[str, ...]] = Counter()
        self.samples = 0

    def __call__(self, prompt: Prompt) -> str:
        self.samples += 1
        done = tuple(split_steps(prompt.assistant_prefix))
        options = self.table.get(done, [self.default])
        step = options[self.seen[done] % len(options)]
        self.seen[done] += 1
        return step if step.startswith("Answer") else step + "\n\nthen more"


class CountingPolicy(ScriptedPolicy):
    """A ScriptedPolicy that records every ``generate`` call: the partial solutions and ``n``."""

    def __init__(self, script: Any, **kw: Any):
        super().__init__(script, **kw)
        self.calls: list[tuple[list[tuple[str, ...]], int]] = []

    def generate(
        self, prompts: Sequence[Prompt], params: SamplingParams | None = None
    ) -> list[list[Completion]]:
        params = params or SamplingParams()
        self.calls.append(([tuple(split_steps(p.assistant_prefix)) for p in prompts], params.n))
        return super().generate(prompts, params)


def table_prm(scores: Mapping[str, float], default: float = 0.5) -> FunctionPRM:
    """A PRM that scores a step by its text alone."""
    return FunctionPRM(lambda q, steps: scores.get(steps[-1], default), name="table-prm")


@pytest.fixture
def make_problem() -> Callable[..., SearchProblem]:
    """``make_problem(table, scores, **SearchProblem kwargs)`` with a CountingPolicy over a StepScript."""

    def build(
        table: Mapping[tuple[str, ...], Sequence[str]] | Callable[[Prompt], str],
        scores: Mapping[str, float] | None = None,
        **kw: Any,
    ) -> SearchProblem:
        script = table if callable(table) else StepScript(table)
        prm = kw.pop("prm", table_prm(scores or {}))
        return SearchProblem(Prompt.user(QUESTION), CountingPolicy(script), prm, **kw)

    return build
