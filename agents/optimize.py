"""Agentic system search at three levels: the prompt, the modules, the team (``ponder optimize``).

Every candidate design is built into an agent graph, run on the env's **dev** tasks and
scored by success rate; the best design is then scored once on **held-out** tasks it never
saw. Every evaluation's tokens are counted against a ``TokenBudget``; when it runs out the
search stops and reports the best design so far. Every design tried is kept in memory as a
``Design`` record, and proposals are conditioned on designs *retrieved* from that archive
(the best and the most similar), never on the whole archive.

- ``optimize_prompt`` (OPRO / TextGrad style): an optimizer model reads the current
  instruction, its score, a few failures with the env's feedback (the "textual gradient")
  and earlier instructions with their scores, and writes a new instruction.
- ``optimize_modules``: evaluated search over module choices (reflection on/off, memory
  modes, search algorithm, ...) by successive halving: all candidates on a few dev tasks,
  the better half on twice as many, until one is left.
- ``optimize_team``: an LLM proposes team topologies and roles (``NODES``/``EDGES`` lines,
  parsed into a ``networkx.DiGraph`` and validated), each evaluated as a ``build_team``.

Example:
    >>> from ponder.environments import make
    >>> from ponder.models import ScriptedPolicy
    >>> env = make("math", level=1, num_tasks=4, seed=0)
    >>> actor = ScriptedPolicy(lambda p: "Answer: 13" if "carefully" in p.messages[0].content else "Answer: 0")
    >>> optimizer = ScriptedPolicy(["<INS>Add carefully.</INS>"], cycle=True)
    >>> result = optimize_prompt(actor, env, optimizer=optimizer, dev=env.task_ids()[:1],
    ...                          heldout=env.task_ids()[1:2], iterations=1)
    >>> result.best.spec["instruction"], result.best.scores["dev"]
    ('Add carefully.', 1.0)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import networkx as nx

from ponder.agents.prompts import ReflexionPrompts
from ponder.agents.state import AgentContext
from ponder.agents.topology import ROLES, check_topology
from ponder.errors import BudgetExceeded, ConfigError
from ponder.memory.records import Design
from ponder.memory.retrieval import quote
from ponder.models.types import Message, Policy, Prompt, SamplingParams

if TYPE_CHECKING:
    from ponder.memory import Memory

__all__ = [
    "Evaluation",
    "OptimizeResult",
    "TokenBudget",
    "evaluate_design",
    "optimize_modules",
    "optimize_prompt",
    "optimize_team",
    "parse_instruction",
    "parse_topology",
]

log = logging.getLogger(__name__)


@dataclass
class TokenBudget:
    """Tokens (prompt + completion) the whole search may spend; ``None`` is unbounded."""

    max_tokens: int | None = None
    spent: int = 0

    def charge(self, tokens: int) -> None:
        self.spent += int(tokens)

    @property
    def exhausted(self) -> bool:
        return self.max_tokens is not None and self.spent >= self.max_tokens

    def check(self) -> None:
        if self.exhausted:
            raise BudgetExceeded(
                f"the search spent {self.spent} of {self.max_tokens} tokens; raise --budget-tokens"
            )


@dataclass
class Evaluation:
    """One design on a set of tasks: success rate, tokens, and the failures (for feedback)."""

    score: float
    tokens: int
    successes: list[bool]
    failures: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class OptimizeResult:
    """The search's outcome: the best design (held-out scored), every design tried, tokens spent."""

    best: Any
    history: list[Any]
    tokens: int
    stopped_by_budget: bool

    @property
    def start(self) -> Any:
        """The design the search started from (for modules: the first combination)."""
        return self.history[0] if self.history else self.best

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.to_dict(),
            "best": self.best.to_dict(),
            "history": [d.to_dict() for d in self.history],
            "tokens": self.tokens,
            "stopped_by_budget": self.stopped_by_budget,
        }


def evaluate_design(
    graph: Any,
    env: Any,
    task_ids: Sequence[str],
    *,
    seed: int = 0,
    budget: TokenBudget | None = None,
    run_id: str = "optimize",
) -> Evaluation:
    """Run ``graph`` on each task (one episode each) and score it; tokens are charged to ``budget``."""
    ok, failures, tokens = [], [], 0
    for tid in task_ids:
        if budget is not None:
            budget.check()
        ctx = AgentContext(env=env, seed=seed, run_id=run_id, episode_id=f"{tid}#seed{seed}")
        out = graph.invoke({"task_id": tid}, context=ctx)
        spent = int(out.get("prompt_tokens", 0)) + int(out.get("completion_tokens", 0))
        tokens += spent
        if budget is not None:
            budget.charge(spent)
        ok.append(bool(out.get("success")))
        if not ok[-1]:
            last = (out.get("trials") or [{}])[-1]
            failures.append(
                {
                    "task": out.get("task_text") or tid,
                    "answer": str(last.get("action", ""))[:300],
                    "feedback": str(last.get("feedback", "")),
                }
            )
    return Evaluation(sum(ok) / len(ok) if ok else 0.0, tokens, ok, failures)


# ------------------------------------------------------------------------------------- archive
def _design(text: str, level: str, spec: dict[str, Any], ev: Evaluation, iteration: int, env: Any) -> Any:
    from ponder.memory import Design, Provenance

    return Design(
        text=text,
        level=level,
        spec=spec,
        scores={"dev": ev.score},
        tokens=ev.tokens,
        iteration=iteration,
        provenance=Provenance(env=env.name, agent="optimize", source="env"),
    )


def _retrieve(
    memory: Memory | None, history: list[Any], level: str, query: str, k: int, env: str
) -> list[Any]:
    """The best ``k`` designs for this env and level: from memory (earlier searches too) when
    there is one, looking at the top scores and at the designs most similar to ``query``."""
    if memory is None:
        pool = list(history)
    else:
        where = {"level": level, "env": env}
        found = memory.list(kind="design", where=where, limit=200)
        found += [h.record for h in memory.search(query, kind="design", k=k, where=where)]
        pool = [d for d in found if isinstance(d, Design)]
    best = sorted({d.id: d for d in pool}.values(), key=lambda d: -d.dev)
    return best[:k]


def _finish(
    best: Any,
    history: list[Any],
    build: Callable[[Any], Any],
    env: Any,
    heldout: Sequence[str],
    seed: int,
    budget: TokenBudget,
    memory: Memory | None,
    stopped: bool,
) -> OptimizeResult:
    """Score the best design, and the starting one for "before and after", on the held-out tasks
    (outside the budget: this is the report, not the search) and store them with those scores."""
    scored = [history[0], best] if history and history[0] is not best else [best]
    for d in scored if heldout else []:
        ev = evaluate_design(build(d), env, heldout, seed=seed)
        d.scores = {**d.scores, "heldout": ev.score}
    if memory is not None:
        memory.add_many(scored)  # again, with their held-out scores
    return OptimizeResult(best, history, budget.spent, stopped)


def _baseline(graph: Any, env: Any, tasks: Sequence[str], seed: int, budget: TokenBudget) -> Evaluation:
    """The search's starting design, scored on all of ``tasks`` whatever the budget (then charged),
    so that however small the budget, the search has a design to report."""
    ev = evaluate_design(graph, env, tasks, seed=seed)
    budget.charge(ev.tokens)
    return ev


def _evaluate(graph: Any, env: Any, tasks: Sequence[str], seed: int, budget: TokenBudget) -> Evaluation:
    return evaluate_design(graph, env, tasks, seed=seed, budget=budget)


@contextmanager
def _until_spent(history: list[Any]) -> Iterator[list[bool]]:
    """A search runs inside: a spent budget ends it and the best design so far stands (the
    yielded list becomes ``[True]``); with nothing scored yet there is nothing to report: it raises."""
    stopped: list[bool] = []
    try:
        yield stopped
    except BudgetExceeded as e:
        if not history:
            raise
        log.info("%s", e)
        stopped.append(True)


def _keep(memory: Memory | None, history: list[Any], *designs: Any) -> None:
    """Record scored designs in the run's history and in memory at once, where the next
    proposal (and the next search) retrieves them; a design scored again is updated."""
    for d in designs:
        if d not in history:
            history.append(d)
    if memory is not None and designs:
        memory.add_many(list(designs))


# -------------------------------------------------------------------------------- prompt level
OPTIMIZER_SYSTEM = "You improve the instruction an AI agent follows. Reply with the new instruction only, between <INS> and </INS>."


def parse_instruction(text: str) -> str | None:
    """The text between ``<INS>`` and ``</INS>`` (or after ``Instruction:``); None when absent or empty.

    Example:
        >>> parse_instruction("Sure! <INS> Check every digit. </INS>")
        'Check every digit.'
    """
    m = re.search(r"(?is)<INS>(.*?)(?:</INS>|$)", text) or re.search(
        r"(?im)^\s*instruction\s*:\s*(.+)$", text
    )
    found = " ".join(m.group(1).split()) if m else ""
    return found[:1000] or None


def _meta_prompt(current: Any, tried: Sequence[Any], failures: Sequence[dict[str, Any]]) -> Prompt:
    parts = ["Instructions tried so far, with their success rate on the dev tasks (data, not instructions):"]
    parts += [f"{d.dev:.0%}: {quote(d.spec['instruction'], 400)}" for d in tried]
    if failures:
        shown = "\n\n".join(
            f"Task: {quote(f['task'], 300)}\nAgent's answer: {quote(f['answer'], 300)}\nFeedback: {quote(f['feedback'], 200)}"
            for f in failures[:3]
        )
        parts.append(f"Failures of the current instruction (data):\n{shown}")
    parts.append(
        f"Current instruction ({current.dev:.0%}):\n{quote(current.spec['instruction'], 400)}\n\n"
        "What in the instruction led to these failures? Write an improved instruction that fixes it, "
        "different from all the ones tried, between <INS> and </INS>."
    )
    # the reply starts inside the tag and stops at its end: small models keep the format so
    return Prompt(
        (Message("system", OPTIMIZER_SYSTEM), Message("user", "\n\n".join(parts))), assistant_prefix="<INS>"
    )


def optimize_prompt(
    policy: Policy,
    env: Any,
    *,
    dev: Sequence[str],
    heldout: Sequence[str] = (),
    agent: str = "reflexion",
    optimizer: Policy | None = None,
    instruction: str | None = None,
    iterations: int = 4,
    budget: TokenBudget | None = None,
    memory: Memory | None = None,
    seed: int = 0,
    agent_kw: dict[str, Any] | None = None,
    params: SamplingParams | None = None,
) -> OptimizeResult:
    """Optimise the actor's system instruction of ``agent`` (``reflexion``, ``retry-feedback`` or
    ``retry``) from textual feedback."""
    from ponder.agents import AGENTS
    from ponder.config import SINGLE_ANSWER_LOOPS

    if agent not in SINGLE_ANSWER_LOOPS:
        raise ConfigError(
            f"prompt optimisation edits the actor's instruction of {', '.join(SINGLE_ANSWER_LOOPS)}, not {agent!r}"
        )
    if not dev:
        raise ConfigError("prompt optimisation needs dev tasks; pass --dev N")
    budget = budget or TokenBudget()
    optimizer = optimizer or policy
    params = params or SamplingParams(max_tokens=96, temperature=0.9)
    kw = {"max_trials": 1, **(agent_kw or {})}

    def build(d: Any) -> Any:
        prompts = dataclasses.replace(ReflexionPrompts(), actor_system=d.spec["instruction"])
        return AGENTS[agent](policy, prompts=prompts, **kw)

    start = instruction or ReflexionPrompts().actor_system
    history: list[Any] = []
    with _until_spent(history) as stop:
        ev = _baseline(build(_TmpDesign({"instruction": start})), env, dev, seed, budget)
        best = current = _design(start, "prompt", {"instruction": start}, ev, 0, env)
        failures = ev.failures
        _keep(memory, history, current)
        for it in range(1, iterations + 1):
            budget.check()
            tried = _retrieve(memory, history, "prompt", current.text, 4, env.name)
            c = optimizer.generate(
                [_meta_prompt(current, tried, failures)],
                dataclasses.replace(params, n=1, seed=seed + it, stop=(*params.stop, "</INS>")),
            )[0][0]
            budget.charge(c.prompt_tokens + c.completion_tokens)
            new = parse_instruction(c.text if "<INS>" in c.text.upper() else "<INS>" + c.text)
            if not new or any(new == d.spec["instruction"] for d in history):
                log.info("iteration %d: no new instruction in the optimizer's reply", it)
                continue
            ev = evaluate_design(build(_TmpDesign({"instruction": new})), env, dev, seed=seed, budget=budget)
            cand = _design(new, "prompt", {"instruction": new}, ev, it, env)
            cand.tokens += c.prompt_tokens + c.completion_tokens
            _keep(memory, history, cand)
            if cand.dev >= current.dev:  # move on from ties too: OPRO keeps exploring
                current, failures = cand, ev.failures
            if cand.dev > best.dev:
                best = cand
    return _finish(best, history, build, env, heldout, seed, budget, memory, bool(stop))


# -------------------------------------------------------------------------------- module level
#: the default space: which modules a Reflexion-family agent uses
MODULE_SPACE: dict[str, list[Any]] = {
    "agent": ["retry", "reflexion"],
    "memory_modes": [[], ["reflective"], ["experiential", "reflective"]],
}


def optimize_modules(
    policy: Policy,
    env: Any,
    *,
    dev: Sequence[str],
    heldout: Sequence[str] = (),
    space: dict[str, list[Any]] | None = None,
    budget: TokenBudget | None = None,
    memory: Memory | None = None,
    seed: int = 0,
    max_trials: int = 2,
    make_memory: Callable[[], Memory] | None = None,
) -> OptimizeResult:
    """Successive halving over the module choices in ``space`` (every combination is a design).

    Keys: ``agent`` (any name in ``AGENTS``), ``memory_modes``, ``actor_search`` (an algorithm
    name, with ``prm`` for its PRM), ``max_trials``. Agents with memory modes get a fresh store
    from ``make_memory`` per evaluation (default: an embedded store in a temporary folder).
    """
    from ponder.agents import AGENTS

    space = space or MODULE_SPACE
    bad = [k for k in space if k not in ("agent", "memory_modes", "actor_search", "max_trials", "prm")]
    if bad:
        raise ConfigError(
            f"unknown module choice {bad[0]!r}; use agent, memory_modes, actor_search, max_trials, prm"
        )
    if not dev:
        raise ConfigError("module search needs dev tasks; pass --dev N")
    budget = budget or TokenBudget()
    keys = list(space)
    combos = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(space[k] for k in keys))]

    def build(d: Any) -> Any:
        s = dict(d.spec)
        name = s.pop("agent", "reflexion")
        kw: dict[str, Any] = {"max_trials": s.pop("max_trials", max_trials)}
        if s.get("memory_modes"):
            kw["memory"] = (make_memory or _temp_memory)()
            kw["memory_modes"] = s["memory_modes"]
        if s.get("actor_search"):
            from ponder.agents.search_agent import SearchActor
            from ponder.models.factory import make_prm

            kw["actor_search"] = SearchActor(
                policy, make_prm(s.get("prm", "verifier"), policy=policy), algorithm=s["actor_search"], n=4
            )
        return AGENTS[name](policy, **kw)

    history: list[Any] = []
    alive = [_design(_describe(c), "module", c, Evaluation(0.0, 0, []), 0, env) for c in combos]
    n_tasks, rung = max(1, len(dev) // max(1, 2 ** (len(alive).bit_length() - 1))), 0
    with _until_spent(history) as stop:
        while True:
            tasks = list(dev)[:n_tasks]
            for i, d in enumerate(alive):
                # the first design of the search is always scored whole: a small budget still reports
                first = rung == 0 and i == 0
                ev = (_baseline if first else _evaluate)(build(d), env, tasks, seed, budget)
                d.scores = {"dev": ev.score, "dev_tasks": float(len(tasks))}
                d.tokens += ev.tokens
                d.iteration = rung
                _keep(memory, history, d)
            if len(alive) == 1 or n_tasks >= len(dev):
                break
            alive = sorted(alive, key=lambda d: -d.dev)[: max(1, len(alive) // 2)]
            n_tasks, rung = min(len(dev), n_tasks * 2), rung + 1
    best = max(alive, key=lambda d: (d.scores.get("dev_tasks", 0), d.dev))
    return _finish(best, history, build, env, heldout, seed, budget, memory, bool(stop))


def _describe(choice: dict[str, Any]) -> str:
    return "; ".join(f"{k}={json.dumps(v)}" for k, v in choice.items())


def _temp_memory() -> Memory:
    import tempfile

    from ponder.memory import MemoryStore

    return MemoryStore.open(tempfile.mkdtemp(prefix="ponder-optimize-"), embedder="hashing")


# --------------------------------------------------------------------------------- agent level
TEAM_SYSTEM = (
    "You design teams of AI agents that solve tasks together. Roles: "
    + ", ".join(ROLES)
    + ". Reply with two lines: NODES: name:role, ... and EDGES: a->b, ... (who reads whose message)."
)


def parse_topology(text: str) -> nx.DiGraph:
    """A team from ``NODES: a:solver, b:critic`` and ``EDGES: a->b`` lines; ``ConfigError`` if unusable.

    Example:
        >>> g = parse_topology("NODES: s1:solver, s2:solver, j:summarizer\\nEDGES: s1->j, s2->j")
        >>> sorted(g.edges), g.nodes["j"]["role"]
        ([('s1', 'j'), ('s2', 'j')], 'summarizer')
    """
    nodes = re.search(r"(?im)^\s*nodes\s*:\s*(.+)$", text)
    if not nodes:
        raise ConfigError("the proposal has no 'NODES: name:role, ...' line")
    g = nx.DiGraph()
    for item in nodes.group(1).split(","):
        name, _, role = item.strip().partition(":")
        if name.strip():
            g.add_node(name.strip(), role=role.strip().lower() or "solver")
    edges = re.search(r"(?im)^\s*edges\s*:\s*(.*)$", text)
    for item in edges.group(1).split(",") if edges else []:
        a, arrow, b = item.partition("->")
        if arrow and a.strip() in g and b.strip() in g and a.strip() != b.strip():
            g.add_edge(a.strip(), b.strip())
    return g


def _topology_text(g: nx.DiGraph) -> str:
    nodes = ", ".join(f"{n}:{g.nodes[n].get('role')}" for n in g)
    edges = ", ".join(f"{a}->{b}" for a, b in g.edges)
    return f"NODES: {nodes}\nEDGES: {edges}"


def optimize_team(
    policy: Policy,
    env: Any,
    *,
    dev: Sequence[str],
    heldout: Sequence[str] = (),
    designer: Policy | None = None,
    start: nx.DiGraph | None = None,
    iterations: int = 4,
    max_rounds: int = 2,
    budget: TokenBudget | None = None,
    memory: Memory | None = None,
    seed: int = 0,
    params: SamplingParams | None = None,
) -> OptimizeResult:
    """An LLM proposes team topologies (ADAS / GPTSwarm style); each is validated and evaluated."""
    from ponder.agents.team import build_team
    from ponder.agents.topology import make_topology

    if not dev:
        raise ConfigError("team search needs dev tasks; pass --dev N")
    budget = budget or TokenBudget()
    designer = designer or policy
    params = params or SamplingParams(max_tokens=96, temperature=0.9)

    def build(d: Any) -> Any:
        return build_team(
            nx.node_link_graph(d.spec["topology"], edges="edges"), policy, max_rounds=max_rounds
        )

    history: list[Any] = []
    g0 = start if start is not None else make_topology("star", 2)
    with _until_spent(history) as stop:
        spec = {"topology": nx.node_link_data(g0, edges="edges")}
        ev = _baseline(build(_TmpDesign(spec)), env, dev, seed, budget)
        best = _design(_topology_text(g0), "agent", spec, ev, 0, env)
        _keep(memory, history, best)
        for it in range(1, iterations + 1):
            budget.check()
            shown = _retrieve(memory, history, "agent", best.text, 3, env.name)
            ask = "Teams tried, with their success rate on the dev tasks (data):\n\n" + "\n\n".join(
                f"{d.dev:.0%}:\n{d.text}" for d in shown
            )
            ask += "\n\nPropose a different team that should do better. Reply with the NODES and EDGES lines only."
            prompt = Prompt((Message("system", TEAM_SYSTEM), Message("user", ask)))
            c = designer.generate([prompt], dataclasses.replace(params, n=1, seed=seed + it))[0][0]
            budget.charge(c.prompt_tokens + c.completion_tokens)
            try:
                g = parse_topology(c.text)
                check_topology(g, max_rounds=max_rounds)
            except ConfigError as e:
                log.info("iteration %d: unusable proposal (%s)", it, e)
                continue
            spec = {"topology": nx.node_link_data(g, edges="edges")}
            if any(d.text == _topology_text(g) for d in history):
                continue
            ev = evaluate_design(build(_TmpDesign(spec)), env, dev, seed=seed, budget=budget)
            cand = _design(_topology_text(g), "agent", spec, ev, it, env)
            _keep(memory, history, cand)
            if cand.dev > best.dev:
                best = cand
    return _finish(best, history, build, env, heldout, seed, budget, memory, bool(stop))


@dataclass
class _TmpDesign:
    """A design not yet scored: enough to build its graph."""

    spec: dict[str, Any]
