"""What every search algorithm shares: the problem, step expansion, PRM scoring, the result.

A solution is a list of *steps* separated by ``separator`` (default a blank line). To extend
a partial solution the policy continues the assistant prefix ``steps joined + separator`` and
stops at the next separator; all partial solutions of one expansion go to the policy in one
``generate`` call (n samples each), and all new steps to the PRM in one ``score`` call. Both
calls are charged to the problem's ``Budget``.

The budget is checked per sample (see ``ponder.search.budget``): steps and whole solutions
are drawn in batched rounds, each asking only for the samples whose worst case still fits
(one while anything is left), until the expansion has its ``n`` or the budget is spent; with
no limit, or while it is far, that is one call. Helper calls (``generate``: reflections, LM
values) are cut to what is left. A PRM that generates (an LLM judge) gets the rest of the
budget as its allowance and its tokens are charged as ``judge_tokens``.

Oracles: ``problem.evaluate`` is the environment's verifier; it reads the gold answer. An
algorithm that uses it for a decision calls ``problem.verify`` (LATS' terminal reward, MCTS'
``use_env_reward``), and a PRM with ``oracle = True`` (``VerifierPRM``) is one too; either way
``problem.oracle_sources`` records it and the result says ``oracle=True``.

Every algorithm has one signature, ``fn(problem, *, n=..., **options) -> SearchResult``, and
registers in ``ponder.search.ALGORITHMS``.

Example:
    >>> from ponder.models import ScriptedPolicy
    >>> from ponder.models.types import Prompt
    >>> policy = ScriptedPolicy(["2 + 3 = 5.\\n\\nAnswer: 5"], cycle=True)
    >>> problem = SearchProblem(Prompt.user("What is 2 + 3?"), policy, question="What is 2 + 3?")
    >>> [s.text for s in problem.expand([[]], n=2)[0]]
    ['2 + 3 = 5.', '2 + 3 = 5.']
    >>> problem.budget.policy_calls
    1
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ponder.errors import ConfigError
from ponder.models.prm import PRM, Aggregation, aggregate_scores
from ponder.models.types import Completion, Policy, Prompt, SamplingParams
from ponder.search.budget import Budget
from ponder.search.tree import SearchTree

if TYPE_CHECKING:
    from ponder.models.prm_oracle import JudgeScores

__all__ = [
    "SearchAlgorithm",
    "SearchProblem",
    "SearchResult",
    "Step",
    "default_answer_of",
    "join_steps",
    "split_steps",
    "states_final_answer",
]

DEFAULT_SEPARATOR = "\n\n"
_ANSWER = re.compile(r"(?im)^\s*(?:final\s+)?answer\s*[:=]\s*(.+?)\s*$")
_FINAL = re.compile(r"(?im)^\s*(?:final\s+)?answer\s*[:=]|\\boxed\{|^\s*####")


def states_final_answer(text: str) -> bool:
    """True if ``text`` states a final answer (an ``Answer:`` line, ``\\boxed{}``, ``####``).

    This ends a solution; ``answer_of`` is for voting and may read any number (the math env's
    ``answer_key`` falls back to the last number, which every intermediate step has).

    Example:
        >>> states_final_answer("9 + 4 = 13."), states_final_answer("Answer: 13")
        (False, True)
    """
    return bool(_FINAL.search(text))


def default_answer_of(text: str) -> str | None:
    """The text after the last ``Answer:`` line, normalised for voting; None without one.

    Example:
        >>> default_answer_of("2 + 3 = 5.\\nAnswer: 5.")
        '5'
    """
    found = _ANSWER.findall(text)
    if not found:
        return None
    return found[-1].strip().rstrip(".").strip().replace(",", "") or None


def split_steps(text: str, separator: str = DEFAULT_SEPARATOR) -> list[str]:
    """A solution's steps: split at ``separator``, empty pieces dropped, each stripped.

    Example:
        >>> split_steps("a = 1.\\n\\n\\n\\nb = 2.\\n\\nAnswer: 2")
        ['a = 1.', 'b = 2.', 'Answer: 2']
    """
    return [s.strip() for s in text.split(separator) if s.strip()]


def join_steps(steps: Sequence[str], separator: str = DEFAULT_SEPARATOR) -> str:
    return separator.join(steps)


@dataclass(frozen=True)
class Step:
    """One generated step: its text, tokens, whether the solution ends with it, and the sum of
    its tokens' log-probabilities (None unless asked for and the backend gave them)."""

    text: str
    tokens: int
    terminal: bool
    finish_reason: str = "stop"
    logprob: float | None = None


@dataclass
class SearchProblem:
    """One question to search on, with everything the algorithms need.

    Attributes:
        prompt: the chat prompt that asks for a step-by-step solution; steps continue its
            assistant prefix.
        policy: generates steps (one batched call per expansion).
        prm: scores steps; None for algorithms that do not need one (majority vote).
        question: the text the PRM sees (default the prompt's last user message).
        params: sampling for a step (``max_tokens`` is per step; ``stop`` is set to the separator).
        separator: between steps.
        max_steps: a partial solution of this many steps is terminal.
        aggregation: PRM step scores -> solution score (``last``, ``min``, ``prod``, ``mean``).
        answer_of: solution text -> its final answer (for voting and for terminal steps).
        budget: charged by every call; algorithms stop when it is exhausted.
        seed: base sampling seed; each call derives its own.
        evaluate: solution text -> ``(success, feedback)`` from the environment, for methods
            that use environment feedback (LATS) and for oracle PRMs; None when not available.
            When it reads the gold answer (``evaluate_reads_answer``, true unless the env says
            otherwise, as HumanEval's visible tests do) a search that calls it (through
            ``verify``) is an oracle.
        evaluate_reads_answer: whether ``evaluate`` reads the gold answer
            (``TextEnv.verifier_reads_answer``).
        oracle_sources: what made this search an oracle so far (filled in by ``verify`` and
            ``score``); empty for an honest search.
    """

    prompt: Prompt
    policy: Policy
    prm: PRM | None = None
    question: str = ""
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_tokens=64, temperature=0.8))
    separator: str = DEFAULT_SEPARATOR
    max_steps: int = 8
    aggregation: Aggregation = "last"
    answer_of: Callable[[str], str | None] = default_answer_of
    budget: Budget = field(default_factory=Budget)
    seed: int = 0
    evaluate: Callable[[str], tuple[bool, str]] | None = None
    evaluate_reads_answer: bool = True
    oracle_sources: set[str] = field(default_factory=set)
    _calls: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if not self.separator:
            raise ConfigError("separator is empty; pass the text between steps, e.g. '\\n\\n'")
        if self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if not self.question:
            self.question = self.prompt.messages[-1].content

    # --- generation ---------------------------------------------------------------------
    def prefix_prompt(self, steps: Sequence[str]) -> Prompt:
        """The prompt whose assistant turn continues ``steps`` (plus a separator when not empty)."""
        prefix = self.prompt.assistant_prefix + (
            join_steps(steps, self.separator) + self.separator if steps else ""
        )
        return dataclasses.replace(self.prompt, assistant_prefix=prefix)

    def _next_seed(self) -> int:
        self._calls += 1
        return (self.seed * 1_000_003 + self._calls) & 0x7FFFFFFF

    def plan(self, prompts: int, n: int, max_tokens: int, *, may_pass: bool) -> tuple[int, int, int]:
        """``(prompts, n, max_tokens)`` of the next call within the budget; 0 prompts: skip it.

        The whole call while its worst case fits; else fewer samples per prompt, or fewer
        prompts with one sample each; when not one sample fits but tokens are left, one
        sample: of full length if ``may_pass`` (a step or a solution; the search may pass the
        limit by less than ``max_tokens``), else cut to the tokens left (helper calls).
        """
        k = self.budget.samples_allowed(prompts * n, max_tokens)
        if k == 0:
            return 0, 0, max_tokens
        if k >= prompts * n:
            p, each = prompts, n
        elif k >= prompts:
            p, each = prompts, k // prompts
        else:
            p, each = k, 1
        left = self.budget.left_generated
        if not may_pass and left is not None and p * each * max_tokens > left:
            max_tokens = max(1, left)  # only when k == 1 was granted beyond what fits: p == each == 1
        return p, each, max_tokens

    def expand(
        self, prefixes: Sequence[Sequence[str]], n: int, *, logprobs: bool = False
    ) -> list[list[Step]]:
        """``n`` next steps for each partial solution: one policy call for all of them.

        Under a generated-token limit the samples come in batched rounds (see ``_draw``), and
        fewer than ``n`` (none for some partial solutions) when the budget runs out.
        ``logprobs=True`` asks the backend for token log-probabilities (``Step.logprob``;
        MCTS' PUCT prior).
        """
        params = dataclasses.replace(
            self.params, stop=(self.separator, *self.params.stop), logprobs=self.params.logprobs or logprobs
        )
        rows = self._draw([self.prefix_prompt(q) for q in prefixes], n, params)
        return [[self._step(c, len(q) + 1) for c in row] for q, row in zip(prefixes, rows, strict=True)]

    def _draw(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[list[Completion]]:
        """``n`` samples per prompt within the budget, in as few calls as it allows.

        Without a generated-token limit: one call. With one: rounds, each asking only for the
        samples whose worst case (``params.max_tokens`` each) still fits, or one sample when
        none does but tokens are left (``plan``), until every prompt has ``n`` or the budget is
        spent. So every sample is drawn while the budget is not yet spent, and the search
        passes it by less than one sample's ``max_tokens``.
        """
        got: list[list[Completion]] = [[] for _ in prompts]
        while todo := [i for i, g in enumerate(got) if len(g) < n]:
            need = min(n - len(got[i]) for i in todo)
            p, each, _ = self.plan(len(todo), need, params.max_tokens, may_pass=True)
            if p == 0:
                break
            call = dataclasses.replace(params, n=each, seed=self._next_seed())
            rows = self.policy.generate([prompts[i] for i in todo[:p]], call)
            self._charge(rows)
            for i, row in zip(todo[:p], rows, strict=True):
                got[i] += row
        return got

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """A policy call outside step expansion (a reflection, an LM value): seeded, charged,
        and kept within the budget: fewer samples or a shorter ``max_tokens`` when little is
        left, empty rows for prompts not paid for (all empty once the budget is spent)."""
        prompts = list(prompts)
        p, each, max_tokens = self.plan(len(prompts), params.n, params.max_tokens, may_pass=False)
        if p == 0:
            return [[] for _ in prompts]
        params = dataclasses.replace(params, n=each, max_tokens=max_tokens, seed=self._next_seed())
        rows = self.policy.generate(prompts[:p], params)
        self._charge(rows)
        return list(rows) + [[] for _ in prompts[p:]]

    def complete(self, n: int, prefixes: Sequence[Sequence[str]] = ((),)) -> list[list[str]]:
        """``n`` whole solutions continuing each prefix (no stop at separators), as step lists."""
        return [steps for steps, _ in self.complete_with_tokens(n, prefixes)]

    def complete_with_tokens(
        self, n: int, prefixes: Sequence[Sequence[str]] = ((),)
    ) -> list[tuple[list[str], int]]:
        """Like ``complete``, with each solution's generated tokens.

        A solution may use ``max_tokens * max_steps`` tokens; under a generated-token limit
        they are drawn in batched rounds while the budget lasts (``_draw``), so fewer than
        ``n`` may come back. Solutions come in the order drawn, prefix by prefix.
        """
        params = dataclasses.replace(
            self.params, max_tokens=self.params.max_tokens * self.max_steps, stop=self.params.stop
        )
        rows = self._draw([self.prefix_prompt(q) for q in prefixes], n, params)
        return [
            ([*q, *split_steps(c.text, self.separator)], c.completion_tokens)
            for q, row in zip(prefixes, rows, strict=True)
            for c in row
        ]

    def _step(self, c: Completion, depth: int) -> Step:
        text = c.text.strip()
        ended = c.finish_reason == "stop" and c.stop_reason != self.separator
        terminal = ended or depth >= self.max_steps or states_final_answer(text) or not text
        logprob = float(sum(c.logprobs)) if c.logprobs else None
        return Step(text, c.completion_tokens, terminal, c.finish_reason, logprob)

    def _charge(self, rows: list[list[Completion]]) -> None:
        self.budget.charge_policy(
            generated=sum(c.completion_tokens for row in rows for c in row),
            prompt=sum(row[0].prompt_tokens for row in rows if row),
        )

    # --- scoring ------------------------------------------------------------------------
    def score(self, candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        """PRM scores of every step of every candidate, in one ``prm.score`` call.

        A PRM that generates (``score_within``: an LLM judge) may spend what is left of the
        generated-token budget and no more; its tokens are charged as generated and judge
        tokens. An oracle PRM marks the search as an oracle.
        """
        if self.prm is None:
            raise ConfigError(
                "this search needs a PRM; pass prm=... (e.g. --prm PATH, --prm judge, or the oracle --prm verifier)"
            )
        if not candidates:
            return []
        if getattr(self.prm, "oracle", False):
            self.oracle_sources.add(
                f"PRM {getattr(self.prm, 'name', type(self.prm).__name__)} reads the gold answer"
            )
        within: Callable[..., JudgeScores] | None = getattr(self.prm, "score_within", None)
        if callable(within):
            out = within(
                self.question, [list(c) for c in candidates], max_generated=self.budget.left_generated
            )
            self.budget.charge_prm(tokens=out.prompt_tokens)
            self.budget.charge_judge(generated=out.generated)
            return out.scores
        before = _prm_tokens(self.prm)
        scores = self.prm.score(self.question, [list(c) for c in candidates])
        after = _prm_tokens(self.prm)
        read = after - before if before is not None and after is not None else _approx_tokens(candidates)
        self.budget.charge_prm(tokens=read)
        return scores

    def verify(self, text: str) -> tuple[bool, str]:
        """``problem.evaluate(text)`` for a decision inside the search: the result becomes an
        ORACLE result when the verifier reads the gold answer (``evaluate_reads_answer``)."""
        if self.evaluate is None:
            raise ConfigError(
                "this search needs environment feedback but problem.evaluate is None; build the problem "
                "with ponder.search.prompts.problem_for_task(...) or pass SearchProblem(..., evaluate=fn)"
            )
        if self.evaluate_reads_answer:
            self.oracle_sources.add("problem.evaluate (the env's verifier) decided inside the search")
        return self.evaluate(text)

    def value(self, step_scores: Sequence[float]) -> float:
        return aggregate_scores(step_scores, self.aggregation)

    def answer(self, steps: Sequence[str]) -> str | None:
        return self.answer_of(join_steps(steps, self.separator))


def _prm_tokens(prm: Any) -> int | None:
    usage = getattr(prm, "usage", None)
    return None if usage is None else int(getattr(usage, "tokens", 0))


def _approx_tokens(candidates: Sequence[Sequence[str]]) -> int:
    from ponder.models.fake import count_tokens

    return sum(count_tokens(s) for c in candidates for s in c)


@dataclass
class SearchResult:
    """What a search returns: the chosen solution, why, the tree, and what it cost.

    Attributes:
        text: the chosen solution, steps joined by the separator ("" if none was found).
        steps: the chosen solution's steps.
        answer: its final answer (None if it has none).
        score: its aggregated PRM score (None without a PRM).
        tree: everything explored; the chosen path is marked.
        budget: the totals spent (``Budget.as_dict()``).
        algorithm: the registry name.
        candidates: the finished solutions considered: ``{"steps", "answer", "score", "node"}``.
        oracle: the search used the gold answer for a decision (an oracle PRM such as
            ``VerifierPRM``, or ``problem.evaluate`` inside the search): not an honest result.
        oracle_sources: what made it an oracle (empty when ``oracle`` is False).
    """

    text: str
    steps: list[str]
    answer: str | None
    score: float | None
    tree: SearchTree
    budget: dict[str, Any]
    algorithm: str
    candidates: list[dict[str, Any]] = field(default_factory=list)
    oracle: bool = False
    oracle_sources: list[str] = field(default_factory=list)

    def to_dict(self, *, with_tree: bool = True) -> dict[str, Any]:
        out = {
            "algorithm": self.algorithm,
            "text": self.text,
            "steps": self.steps,
            "answer": self.answer,
            "score": self.score,
            "budget": self.budget,
            "candidates": self.candidates,
            "oracle": self.oracle,
            "oracle_sources": self.oracle_sources,
        }
        if with_tree:
            out["tree"] = self.tree.to_dict()
        return out


def finish(
    problem: SearchProblem,
    tree: SearchTree,
    node: int | None,
    algorithm: str,
    candidates: list[dict[str, Any]] | None = None,
    *,
    budget: dict[str, Any] | None = None,
    oracle_sources: set[str] | None = None,
) -> SearchResult:
    """Build the result for the chosen ``node`` (None: nothing found) and mark its path.

    ``budget`` (default: the problem's totals now) and ``oracle_sources`` (default: the
    problem's) let results that share one sample set report only what each method used.
    """
    budget = problem.budget.as_dict() if budget is None else budget
    sources = sorted(problem.oracle_sources if oracle_sources is None else oracle_sources)
    if node is None:
        return SearchResult(
            "", [], None, None, tree, budget, algorithm, candidates or [], bool(sources), sources
        )
    tree.mark_chosen(node)
    steps = tree.steps(node)
    scores = tree.scores(node)
    return SearchResult(
        join_steps(steps, problem.separator),
        steps,
        problem.answer(steps),
        problem.value(scores) if scores else None,
        tree,
        budget,
        algorithm,
        candidates or [],
        bool(sources),
        sources,
    )


class SearchAlgorithm(Protocol):
    """``fn(problem, *, n, **options) -> SearchResult``: the one signature of ``ALGORITHMS``."""

    def __call__(self, problem: SearchProblem, *, n: int = ..., **options: Any) -> SearchResult: ...
