"""ExpeL's insight extraction as in its paper and reference code: offline, over training episodes.

ExpeL (Zhao et al., arXiv 2308.10144; LeapLabTHU/ExpeL, ``agent/expel.py`` ``create_rules``)
gathers experience on training tasks first (Reflexion trials), then builds a rule list in two
passes, and freezes it for evaluation:

1. **compare**: for each training task, each successful trial against each failed trial *of the
   same task* (a task that failed, then succeeded on a later trial; or two episodes of it);
2. **success-only**: the first successful trial of every task that has one, shuffled (``seed``)
   and cut into batches of at most ``batch_size = 8`` (``success_critique_num``) of equal size.

Every call shows the model *all* current rules, ranked by votes, and reads operations: AGREE (+1),
REMOVE (-1), EDIT (+1, reworded), ADD (a new rule at 2), applied in that order, REMOVE first; a
rule at 0 is removed. The list is *full* at ``max_rules = 20`` (``max_num_rules``): the prompt
then asks to remove first and add only very different rules; REMOVE counts -3 once the list
holds ``max_rules + 5`` rules (``list_full = max_num_rules + 5 <= len(rules)`` in the reference
code). Nothing caps the list otherwise. At evaluation the rules are frozen and all shown.

The prompts and the plan are in ``agents.expel_prompts``. Here the rules are ``Insight``
records of the store (provenance ``agent="expel"``, ``run_id`` = the set's ``name``), recalled by ``MemoryModes(insights="frozen")`` or the embodied agent's
``concept="expel-frozen"``. The extraction is a LangGraph graph: ``ask`` (the model's operations,
checkpointed) then ``remember`` (applied with an ``update_id``), step after step, so a killed
extraction resumed from its checkpointer, or re-run with the same seed over the same store, ends
with the same rules. What differs from the reference code: a vote names its rule by number (ExpeL
matches the restated text); an ADD nearly equal (cosine >= 0.9) to a rule up-votes it (ExpeL drops
it); trials are ponder's ``Experience`` steps (answer or actions, and feedback), not ReAct logs.

Example:
    >>> import tempfile
    >>> from ponder.memory import Experience, MemoryStore, Provenance
    >>> from ponder.models import ScriptedPolicy
    >>> store = MemoryStore.open(tempfile.mkdtemp(), embedder="hashing")
    >>> prov = Provenance(task_id="t1", episode_id="e1", source="env", trusted=True)
    >>> _ = store.add(Experience("Add 2 and 2.", [{"action": "5", "feedback": "wrong", "success": False},
    ...     {"action": "4", "feedback": "correct", "success": True}], "success", provenance=prov))
    >>> report = extract_insights(store, ScriptedPolicy(["ADD: Check the sum before answering."], cycle=True))
    >>> [s["kind"] for s in report.log], [r.text for r in report.rules]
    (['compare', 'success'], ['Check the sum before answering.'])
    >>> store.close()
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from typing_extensions import Required, TypedDict

from ponder.agents.expel_prompts import (
    BATCH_SIZE,
    compare_prompt,
    expel_order,
    plan_extraction,
    success_prompt,
)
from ponder.errors import ConfigError
from ponder.memory.insights import InsightBook, apply_pending, parse_operations, pending_update
from ponder.memory.records import Experience, Insight, Provenance
from ponder.memory.retrieval import is_trusted
from ponder.models.check import ensure_policy
from ponder.models.types import Policy, SamplingParams

if TYPE_CHECKING:
    from ponder.memory import Memory

__all__ = [
    "BATCH_SIZE",
    "EXPEL_AGENT",
    "MAX_RULES",
    "ExtractionReport",
    "build_extraction",
    "compare_prompt",
    "expel_order",
    "extract_insights",
    "frozen_insights",
    "insight_book",
    "plan_extraction",
    "success_prompt",
]

log = logging.getLogger(__name__)

EXPEL_AGENT = "expel"
#: the default name of an extracted set (its insights' ``run_id``)
DEFAULT_SET = "expel"
MAX_RULES = 20  # max_num_rules
FULL_MARGIN = 5  # REMOVE counts 3 from max_num_rules + 5 rules on


# ---------------------------------------------------------------------------------- the graph
def insight_book(store: Memory, name: str = DEFAULT_SET) -> InsightBook:
    """The book of one extracted set: insights with ``agent="expel"`` and ``run_id=name``."""
    return InsightBook(store, where={"run_id": name, "agent": EXPEL_AGENT})


def frozen_insights(store: Memory, name: str = DEFAULT_SET) -> list[Insight]:
    """All active rules of an extracted set, most agreed first: what ExpeL shows at evaluation."""
    return insight_book(store, name).active()


class ExtractionState(TypedDict, total=False):
    """The extraction's checkpointed state: the plan, the next step, the update asked for.

    ``steps``, ``step`` and ``prefix`` are the input (``Required``); a reducer's key starts out empty.
    """

    steps: Required[list[dict[str, Any]]]
    step: Required[int]
    prefix: Required[str]
    pending: dict[str, Any] | None
    log: Required[Annotated[list[dict[str, Any]], operator.add]]
    prompt_tokens: Required[Annotated[int, operator.add]]
    completion_tokens: Required[Annotated[int, operator.add]]


def _seed(seed: int, prefix: str, i: int) -> int:
    h = hashlib.blake2b(f"{seed}/{prefix}/{i}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


def build_extraction(
    policy: Policy,
    store: Memory,
    *,
    name: str = DEFAULT_SET,
    max_rules: int = MAX_RULES,
    seed: int = 0,
    params: SamplingParams | None = None,
    env: str = "",
    checkpointer: Any = None,
) -> Any:
    """The extraction graph: ``ask`` (operations for step ``i``, all rules shown) -> ``remember``
    (applied once, by its ``update_id``) -> ``ask`` ... until the plan is done.

    Invoke with ``{"steps": plan_extraction(...), "step": 0, "prefix": ...}``; ``extract_insights``
    does it for you.
    """
    ensure_policy(policy)
    if max_rules < 1:
        raise ConfigError(f"max_rules must be >= 1, got {max_rules}")
    params = params or SamplingParams(max_tokens=256, temperature=0.0)
    book = insight_book(store, name)

    def ask(state: ExtractionState) -> dict[str, Any]:
        i, step = state["step"], state["steps"][state["step"]]
        rules = book.active()
        full = len(rules) >= max_rules
        weight = 3 if len(rules) >= max_rules + FULL_MARGIN else 1
        if step["kind"] == "compare":
            prompt = compare_prompt(step["task"], step["success"], step["failure"], rules, full=full)
        else:
            prompt = success_prompt([tuple(x) for x in step["items"]], rules, full=full)
        p = dataclasses.replace(params, n=1, seed=_seed(seed, state["prefix"], i))
        c = policy.generate([prompt], p)[0][0]
        ops = parse_operations(c.text, n_shown=len(rules))
        prov = Provenance(
            run_id=name,
            episode_id=f"step{i:04d}",
            env=env,
            agent=EXPEL_AGENT,
            model=getattr(policy, "name", ""),
        )
        pending = pending_update(
            expel_order(ops),
            rules,
            update_id=f"{state['prefix']}/{i:04d}",
            provenance=prov,
            episode_ids=step["episodes"],
            downvote_weight=weight,
        )
        pending["info"] = {
            "step": i,
            "kind": step["kind"],
            "task_ids": step["task_ids"],
            "rules_shown": len(rules),
            "full": full,
            "ops": [str(o) for o in ops],
            "refused": [list(x) for x in ops.skipped],
        }
        return {
            "pending": pending,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
        }

    def remember(state: ExtractionState) -> dict[str, Any]:
        pending = state.get("pending")
        entry: dict[str, Any] = {}
        if pending:
            r = apply_pending(book, pending)
            entry = {
                **pending["info"],
                "applied": {
                    k: len(getattr(r, k))
                    for k in ("added", "merged", "edited", "upvoted", "downvoted", "retired")
                },
                "not_applied": [[str(op), why] for op, why in r.skipped],
            }
        return {"pending": None, "step": state["step"] + 1, "log": [entry] if entry else []}

    def route(state: ExtractionState) -> str:
        return "ask" if state.get("step", 0) < len(state.get("steps", [])) else "end"

    g = StateGraph(ExtractionState)
    g.add_node("ask", ask)
    g.add_node("remember", remember)
    g.add_conditional_edges(START, route, {"ask": "ask", "end": END})
    g.add_edge("ask", "remember")
    g.add_conditional_edges("remember", route, {"ask": "ask", "end": END})
    return g.compile(checkpointer=checkpointer or InMemorySaver(), name="expel-extraction")


@dataclass
class ExtractionReport:
    """What ``extract_insights`` did.

    Attributes:
        name: the set's name (its insights' ``run_id``).
        seed: the seed of the success batches and of sampling.
        compare_steps: same-task success/failure comparisons in the plan.
        success_steps: success-only batches in the plan.
        skipped_steps: steps already applied by an earlier run of the same extraction (not asked again).
        log: per step asked now: kind, tasks, rules shown, ``full``, operations, what was applied.
        rules: the set's active rules at the end, most agreed first (what evaluation shows).
        prompt_tokens, completion_tokens: tokens spent by this call.
    """

    name: str
    seed: int
    compare_steps: int = 0
    success_steps: int = 0
    skipped_steps: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    rules: list[Insight] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _prefix(name: str, seed: int, experiences: Sequence[Experience], batch_size: int, max_rules: int) -> str:
    ids = sorted(e.id for e in experiences)
    fp = hashlib.blake2b(json.dumps([ids, batch_size, max_rules]).encode(), digest_size=4).hexdigest()
    return f"{name}/s{seed}-{fp}"


def _done_upto(book: InsightBook, prefix: str) -> int:
    """The highest step index this extraction already applied (-1: none); refuses another's set."""
    done, other = -1, set()
    for ins in book.store.list(kind="insight", where=book.where):
        if not isinstance(ins, Insight):
            continue
        for ev in ins.history:
            key = str(ev.get("update", ""))
            if key.startswith(prefix + "/"):
                done = max(done, int(key[len(prefix) + 1 :].split("#", 1)[0]))
            elif key:
                other.add(key.rsplit("/", 1)[0])
    if other:
        name = book.where["run_id"]
        raise ConfigError(
            f"the insight set {name!r} in this store was extracted with another seed, other settings or "
            f"other experiences ({sorted(other)[0]}); pass another name, or remove it first: "
            f"ponder memory rm --run {name} --kind insight"
        )
    return done


def extract_insights(
    store: Memory,
    policy: Policy,
    *,
    where: Mapping[str, Any] | None = None,
    batch_size: int = BATCH_SIZE,
    max_rules: int = MAX_RULES,
    seed: int = 0,
    name: str = DEFAULT_SET,
    params: SamplingParams | None = None,
    trusted_only: bool = True,
    checkpointer: Any = None,
) -> ExtractionReport:
    """Extract ExpeL's rules from the training episodes in ``store`` (see the module docstring).

    Args:
        store: a writable ``MemoryStore`` holding the training episodes (``Experience`` records).
        policy: writes the operations.
        where: which experiences are the training set, e.g. ``{"run_id": "train", "env": "math"}``.
        batch_size: successful trials per success-only call (ExpeL: 8).
        max_rules: the rule count at which the list is full (ExpeL: 20; REMOVE is -3 from +5 on).
        seed: shuffles the success batches and seeds sampling.
        name: the set's name: its insights' ``run_id``; ``MemoryModes(insight_set=name)`` reads it.
        params: sampling (default: greedy, 256 new tokens).
        trusted_only: only env-graded experiences (``is_trusted``), since an imported record may
            only claim its success.
        checkpointer: a LangGraph checkpointer, to resume a killed extraction exactly (default:
            in memory). Without one a re-run skips the steps already applied.

    Returns:
        An ``ExtractionReport``. Running it again with the same store, seed and settings asks
        nothing and changes nothing.
    """
    exps = [
        e
        for e in store.list(kind="experience", where=where)
        if isinstance(e, Experience) and (is_trusted(e) or not trusted_only)
    ]
    if not exps:
        raise ConfigError(
            f"no {'trusted ' if trusted_only else ''}experiences match {dict(where or {})}; run training "
            "episodes first (ponder run ... --memory DIR), or widen the filter"
        )
    steps = plan_extraction(exps, batch_size=batch_size, seed=seed)
    prefix = _prefix(name, seed, exps, batch_size, max_rules)
    envs = {e.provenance.env for e in exps}
    graph = build_extraction(
        policy,
        store,
        name=name,
        max_rules=max_rules,
        seed=seed,
        params=params,
        env=envs.pop() if len(envs) == 1 else "",
        checkpointer=checkpointer,
    )
    config = {"configurable": {"thread_id": f"expel/{prefix}"}, "recursion_limit": 2 * len(steps) + 10}
    snap = graph.get_state(config)
    done = _done_upto(insight_book(store, name), prefix)
    if snap.values and not snap.tasks and done < 0 and not frozen_insights(store, name):
        graph.checkpointer.delete_thread(config["configurable"]["thread_id"])  # its rules were removed
        snap = graph.get_state(config)
    tokens = [int(snap.values.get(k, 0)) for k in ("prompt_tokens", "completion_tokens")]
    if snap.tasks:  # a killed extraction: continue from its checkpoint
        start = int(snap.values.get("step", 0))
        graph.invoke(None, config)
    elif snap.values:  # finished before, in this checkpointer
        start = len(steps)
    else:
        start = done + 1
        graph.invoke({"steps": steps, "step": start, "prefix": prefix}, config)
    values = graph.get_state(config).values
    report = ExtractionReport(
        name=name,
        seed=seed,
        compare_steps=sum(s["kind"] == "compare" for s in steps),
        success_steps=sum(s["kind"] == "success" for s in steps),
        skipped_steps=start,
        log=[e for e in values.get("log", []) if e.get("step", -1) >= start],
        rules=frozen_insights(store, name),
        prompt_tokens=int(values.get("prompt_tokens", 0)) - tokens[0],
        completion_tokens=int(values.get("completion_tokens", 0)) - tokens[1],
    )
    log.info(
        "ExpeL extraction %s: %d comparisons, %d success batches, %d steps skipped, %d rules",
        prefix,
        report.compare_steps,
        report.success_steps,
        start,
        len(report.rules),
    )
    return report
