"""Learning from memory, as LangGraph nodes any single-step agent can use.

Three modes (``--memory-modes experiential,reflective,concept``), after the survey's
memory-based reinforcement:

- **experiential** (ExpeL, Synapse): similar *successful* past episodes become few-shot
  turns; a similar *failed* one is shown as a contrast, quoted as data.
- **reflective** (Reflexion's memory, across tasks): reflections on the same task first,
  then those written on similar tasks (similar by the tasks' text, not the lessons'); a failed episode is reflected on at its end so later tasks can
  use it even with one trial.
- **concept**, two ways (``insights=``):

  - ``"online"`` (default), **ExpeL-style (online)**: after an episode, it is compared with the
    most similar past episode of the opposite outcome (usually of *another* task), and the
    model edits the insight set with ADD / EDIT / UPVOTE / DOWNVOTE, seeing the top
    ``k_insights`` rules; the top ``k_insights`` go into the actor's prompt. ExpeL itself
    compares trials of the *same* task and batches of successes, offline, shows *all* rules
    when voting, and freezes them for evaluation: that is the next mode.
  - ``"frozen"``, **ExpeL (reference)**: the rules ``agents.expel.extract_insights`` (``ponder
    memory extract-insights``) extracted offline from training episodes, set ``insight_set``,
    are all shown to the actor and never changed by the run.

  CLIN's causal memory is the embodied agent's (``agents.embodied``, ``concept="clin"``).

Everything recalled is agent-written text, so it reaches the model quoted as data under a
header that says so. Exemplar turns are the exception: an env-verified successful answer
to an env-written task, shown as a worked example (ExpeL's design). Only a *trusted*
experience (``is_trusted``: source env or user, vouched for; what ``ponder run`` writes) is
shown that way: a record that merely claims ``outcome="success"`` (imported, or added by an
agent) is left out, or quoted as data with ``untrusted_experiences="quote"``.

Example:
    >>> from ponder.agents.memory_nodes import parse_memory_modes
    >>> parse_memory_modes("experiential, concept")
    ('experiential', 'concept')
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ponder.agents.prompts import ReflexionPrompts, parse_reflection
from ponder.agents.state import AgentContext, EpisodeState, agent_provenance, remember_reflection
from ponder.errors import ConfigError
from ponder.memory.records import Experience, Reflection
from ponder.memory.retrieval import is_trusted
from ponder.models.fake import count_tokens
from ponder.models.types import Policy, SamplingParams

if TYPE_CHECKING:
    from ponder.memory import Insight, InsightBook, Memory, Provenance, Record

__all__ = [
    "CONCEPT_MODES",
    "MEMORY_MODES",
    "MemoryModes",
    "concept_options",
    "parse_memory_modes",
    "remember_insights",
]

log = logging.getLogger(__name__)

MEMORY_MODES = ("experiential", "reflective", "concept")

#: how the ``concept`` mode learns: name -> (agents that support it, what it is)
CONCEPT_MODES: dict[str, tuple[tuple[str, ...], str]] = {
    "expel-online": (
        ("single-step",),
        "ExpeL-style (online): after each episode, compare with the nearest opposite-outcome "
        "episode (any task) and vote on the top rules",
    ),
    "expel-frozen": (
        ("single-step", "embodied"),
        "ExpeL (reference): all rules of a set extracted offline by `ponder memory extract-insights`, "
        "recalled and never changed",
    ),
    "clin": (
        ("embodied",),
        "CLIN (reference): after each trial the task's causal memory is rewritten from the trace and "
        "the last 3 memories",
    ),
    "clin-voted": (
        ("embodied",),
        "CLIN-style (voted): after each trial, causal lessons added and voted on from the last 15 steps",
    ),
}


def concept_options(concept: str | None, *, embodied: bool, insight_set: str | None = None) -> dict[str, Any]:
    """The agent factory's keyword arguments for a ``concept`` mode name (None: the agent's default).

    Single-step agents (``build_reflexion``) take ``insights="online"|"frozen"``; the embodied
    agent takes ``concept=`` as is; ``insight_set`` (the extracted set's name) goes with
    ``expel-frozen``.

    Example:
        >>> concept_options("expel-frozen", embodied=False), concept_options("clin", embodied=True)
        ({'insights': 'frozen'}, {'concept': 'clin'})
        >>> concept_options("expel-frozen", embodied=True, insight_set="v2")
        {'concept': 'expel-frozen', 'insight_set': 'v2'}
    """
    if concept is None:
        return {}
    kind = "embodied" if embodied else "single-step"
    if concept not in CONCEPT_MODES:
        raise ConfigError(f"unknown concept mode {concept!r}; use one of: {', '.join(CONCEPT_MODES)}")
    if kind not in CONCEPT_MODES[concept][0]:
        ok = [c for c, (kinds, _) in CONCEPT_MODES.items() if kind in kinds]
        raise ConfigError(f"concept mode {concept!r} is not for {kind} agents; they take: {', '.join(ok)}")
    named = {"insight_set": insight_set} if insight_set and concept == "expel-frozen" else {}
    if embodied:
        return {"concept": concept, **named}
    return {"insights": "frozen" if concept == "expel-frozen" else "online", **named}


def parse_memory_modes(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"experiential,reflective"`` or a list -> a validated tuple; ``"none"``/``""``/None -> ()."""
    if spec is None:
        return ()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    modes = tuple(
        dict.fromkeys(m.strip().lower() for m in items if m.strip() and m.strip().lower() != "none")
    )
    bad = [m for m in modes if m not in MEMORY_MODES]
    if bad:
        raise ConfigError(f"unknown memory mode {bad[0]!r}; use any of: {', '.join(MEMORY_MODES)} (or none)")
    return modes


def _budget(texts: list[str], budget: int) -> list[str]:
    out, used = [], 0
    for t in texts:
        n = count_tokens(t)
        if used + n > budget and out:
            break
        out.append(t)
        used += n
    return out


@dataclass
class MemoryModes:
    """The learning modes one agent uses over one memory store.

    Attributes:
        store: any ``ponder.memory.Memory`` (a ``MemoryStore``).
        modes: a subset of ``MEMORY_MODES``.
        policy: writes end-of-episode reflections and insight operations.
        prompts: the agent's prompts (the reflection template is reused).
        agent: the agent's name, for provenance.
        k_exemplars: successful episodes shown as worked examples.
        k_contrasts: failed similar episodes shown as contrasts (off by default: a small model
            copies the wrong answer it is shown).
        k_reflections: reflections recalled.
        k_insights: active insights shown (``insights="online"``; a frozen set is shown whole).
        min_similarity: recalled experiences and similar-task reflections must be at least this
            similar (cosine) to the task, since an unrelated example misleads more than none helps;
            ``None`` takes the embedder's ``related_similarity`` (MiniLM 0.6, hashing 0).
        token_budget: tokens at most for the recalled notes (exemplars excluded).
        learn_params: sampling for reflections and insight operations.
        untrusted_experiences: what to do with a similar successful experience that is not
            ``is_trusted`` (its success is only claimed): ``"skip"`` it (default) or ``"quote"``
            it among the notes, as data.
        insights: the concept mode: ``"online"`` (ExpeL-style: learn after every episode) or
            ``"frozen"`` (ExpeL's reference protocol: recall the set ``insight_set`` extracted
            offline, never write).
        insight_set: the name of the extracted set (``extract_insights(name=...)``).
    """

    store: Memory
    modes: tuple[str, ...]
    policy: Policy
    prompts: ReflexionPrompts
    agent: str = "agent"
    k_exemplars: int = 2
    k_contrasts: int = 0
    k_reflections: int = 3
    k_insights: int = 5
    min_similarity: float | None = None
    token_budget: int = 400
    learn_params: SamplingParams = dataclasses.field(
        default_factory=lambda: SamplingParams(max_tokens=96, temperature=0.7)
    )
    untrusted_experiences: Literal["skip", "quote"] = "skip"
    insights: Literal["online", "frozen"] = "online"
    insight_set: str = "expel"

    def __post_init__(self) -> None:
        self.modes = parse_memory_modes(self.modes)
        if self.insights not in ("online", "frozen"):
            raise ConfigError(f"insights must be 'online' or 'frozen', got {self.insights!r}")
        if self.untrusted_experiences not in ("skip", "quote"):
            raise ConfigError(
                f"untrusted_experiences must be 'skip' or 'quote', got {self.untrusted_experiences!r}"
            )
        if self.min_similarity is None:
            self.min_similarity = float(getattr(self.store.embedder, "related_similarity", 0.0))

    # --- recall -------------------------------------------------------------------
    def recall(self, task_id: str, query: str, ctx: AgentContext) -> dict[str, Any]:
        """State updates for the actor: notes, exemplar turns, insights.

        ``query`` is the task's own text (``TextEnv.task_text``), not the shared instructions.
        """
        out: dict[str, Any] = {"memory_notes": [], "exemplars": [], "insights": [], "shown_insights": []}
        notes: list[str] = []
        if "experiential" in self.modes:
            out["exemplars"], contrasts = self._experiences(query, ctx)
            notes += contrasts
        if "reflective" in self.modes:
            notes += self._reflections(task_id, query, ctx)
        if "concept" in self.modes:
            shown = self._shown()
            out["insights"] = [i.text for i in shown]
            out["shown_insights"] = [i.id for i in shown]
        out["memory_notes"] = _budget(notes, self.token_budget)
        return out

    def _shown(self) -> list[Insight]:
        if self.insights == "online":
            return self._book().active(self.k_insights)
        from ponder.agents.expel import frozen_insights

        rules = frozen_insights(self.store, self.insight_set)
        if not rules:
            log.warning(
                "no insights in the set %r of this memory; extract them first: "
                "ponder memory extract-insights --memory DIR --name %s",
                self.insight_set,
                self.insight_set,
            )
        return rules

    def _others(self, records: Sequence[Record], ctx: AgentContext) -> list[Record]:
        mine = (ctx.run_id, ctx.episode_id)
        return [r for r in records if (r.provenance.run_id, r.provenance.episode_id) != mine]

    def _similar(self, query: str, kind: str, k: int, where: dict[str, Any] | None = None) -> list[Any]:
        hits = self.store.search(query, kind=kind, k=k, where=where)
        floor = self.min_similarity or 0.0  # never None after __post_init__
        return [h for h in hits if h.similarity >= floor]

    def _experiences(self, query: str, ctx: AgentContext) -> tuple[list[list[str]], list[str]]:
        exemplars: list[list[str]] = []
        contrasts: list[str] = []
        if self.k_exemplars:
            hits = self._similar(query, "experience", self.k_exemplars + 2, {"outcome": "success"})
            for h in hits:
                rec = h.record
                if not self._others([rec], ctx):
                    continue
                good = next((s["action"] for s in rec.trajectory if s.get("success")), None)
                if not good:
                    continue
                if is_trusted(rec):
                    exemplars.append([rec.task, good])
                elif self.untrusted_experiences == "quote":
                    contrasts.append(
                        f"A similar task with an unverified claim of success: {rec.task.splitlines()[0]} "
                        f"Claimed answer: {str(good)[:200]}"
                    )
            exemplars = exemplars[: self.k_exemplars]
        if self.k_contrasts:
            hits = self._similar(query, "experience", self.k_contrasts + 2, {"outcome": "failure"})
            for h in [h for h in hits if self._others([h.record], ctx)][: self.k_contrasts]:
                last = h.record.trajectory[-1] if h.record.trajectory else {}
                contrasts.append(
                    f"A similar task that was answered wrongly: {h.record.task.splitlines()[0]} "
                    f"Wrong answer: {str(last.get('action', ''))[:200]} Feedback: {last.get('feedback', '')}"
                )
        return exemplars, contrasts

    def _reflections(self, task_id: str, query: str, ctx: AgentContext) -> list[str]:
        same = self._others(
            self.store.list(kind="reflection", where={"task_id": task_id}, limit=self.k_reflections + 8), ctx
        )
        texts = [r.text for r in same if isinstance(r, Reflection)]
        if len(texts) < self.k_reflections:
            # reflections written on *similar tasks*: similarity is judged between the tasks
            # (experience keys), not between a lesson's wording and a question
            hits = self._similar(query, "experience", 4 * self.k_reflections, {"outcome": "failure"})
            episodes = [
                h.record.provenance.episode_id
                for h in hits
                if h.record.provenance.task_id != task_id and self._others([h.record], ctx)
            ]
            if episodes:
                listed = self.store.list(
                    kind="reflection", where={"episode_id": episodes}, limit=4 * len(episodes)
                )
                found = [r for r in listed if isinstance(r, Reflection)]
                rank = {e: i for i, e in enumerate(episodes)}
                found.sort(key=lambda r: (rank.get(r.provenance.episode_id, len(rank)), -r.trial))
                texts += [r.text for r in found]
        return list(dict.fromkeys(texts))[: self.k_reflections]

    # --- learn --------------------------------------------------------------------
    def remember_reflection(
        self, text: str, state: EpisodeState, trial: Mapping[str, Any], ctx: AgentContext
    ) -> None:
        """Store a reflection; one id per (run, episode, trial), so a resumed node overwrites."""
        remember_reflection(self.store, text, trial, ctx, state["task_id"], self.agent, self.policy)

    def learn(self, state: EpisodeState, ctx: AgentContext, seed: int) -> dict[str, Any]:
        """End-of-episode learning: reflect on a final failure, edit the insight set (online only)."""
        update: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0}
        trials = state.get("trials", [])
        if (
            "reflective" in self.modes
            and not state.get("success")
            and len(state.get("reflections", [])) < len(trials)
        ):
            last = trials[-1]
            prompt = self.prompts.reflect(state["observation"], last["action"], last["feedback"])
            c = self.policy.generate([prompt], dataclasses.replace(self.learn_params, n=1, seed=seed))[0][0]
            text = parse_reflection(c.text)
            self.remember_reflection(text, state, last, ctx)
            update["reflections"] = [text]
            update["prompt_tokens"] += c.prompt_tokens
            update["completion_tokens"] += c.completion_tokens
        if "concept" in self.modes and trials and self.insights == "online":
            p_tok, c_tok, ops, pending = self._extract_insights(state, ctx, seed)
            update["prompt_tokens"] += p_tok
            update["completion_tokens"] += c_tok
            update["insight_ops"] = ops
            update["pending_insights"] = pending
        return update

    def _extract_insights(
        self, state: EpisodeState, ctx: AgentContext, seed: int
    ) -> tuple[int, int, list[str], dict[str, Any] | None]:
        """ExpeL-style (online): compare with the most similar past episode of the opposite outcome
        (any task; ExpeL compares trials of the same task) and ask for operations on the top
        ``k_insights`` rules (ExpeL shows all). Memory is written later, by ``remember``."""
        from ponder.memory.insights import comparison_prompt, parse_operations, pending_update

        success = bool(state.get("success"))
        want = "failure" if success else "success"
        hits = self.store.search(_query(state), kind="experience", k=3, where={"outcome": want})
        found = [h.record for h in hits if isinstance(h.record, Experience) and self._others([h.record], ctx)]
        if not found:
            return 0, 0, [], None
        other = found[0]
        mine = _episode_as_experience(state, ctx, self.agent)
        successes, failures = ([mine], [other]) if success else ([other], [mine])
        shown = self._book().active(self.k_insights)
        prompt = comparison_prompt(successes, failures, shown)
        c = self.policy.generate([prompt], dataclasses.replace(self.learn_params, n=1, seed=seed + 7))[0][0]
        ops = parse_operations(c.text)
        pending = pending_update(
            ops,
            shown,
            update_id=f"{ctx.run_id}/{ctx.episode_id}/insights",
            provenance=self._prov(state, ctx),
            episode_ids=[ctx.episode_id, other.provenance.episode_id],
        )
        return c.prompt_tokens, c.completion_tokens, [str(o) for o in ops], pending

    def remember(self, state: EpisodeState, ctx: AgentContext) -> dict[str, Any]:
        """Apply the insight update ``learn`` left in the state (once, even when this node re-runs)."""
        return remember_insights(self.store, state, ctx)

    def _book(self) -> InsightBook:
        """The online book: every insight but an extracted (frozen) ExpeL set, which no run edits."""
        from ponder.agents.expel import EXPEL_AGENT
        from ponder.memory.insights import InsightBook

        return InsightBook(self.store, where={"agent": {"$ne": EXPEL_AGENT}})

    def _prov(self, state: EpisodeState, ctx: AgentContext) -> Provenance:
        return agent_provenance(ctx, state["task_id"], self.agent, self.policy)


def remember_insights(store: Memory, state: Mapping[str, Any], ctx: AgentContext) -> dict[str, Any]:
    """A node's body: apply ``state["pending_insights"]`` (a ``pending_update``, or a CLIN
    ``memory.clin.pending_rewrite``) and clear it.

    Asking the model and writing memory are two nodes, so each is safe to re-run after a kill:
    the update is checkpointed before it is applied, and applying it twice changes nothing.
    """
    from ponder.memory.insights import InsightBook, apply_pending

    pending = state.get("pending_insights")
    if not pending:
        return {}
    if pending.get("kind") == "clin-rewrite":
        from ponder.memory.clin import apply_rewrite

        report: Any = apply_rewrite(store, pending)
    else:
        report = apply_pending(InsightBook(store), pending)
    log.info("insight operations for %s: %s", ctx.episode_id, report)
    return {"pending_insights": None}


def _query(state: EpisodeState) -> str:
    return state.get("task_text") or state["observation"]


def _episode_as_experience(state: EpisodeState, ctx: AgentContext, agent: str) -> Experience:
    """The running episode as an (unsaved) Experience, for comparison prompts."""
    from ponder.memory import Experience, Provenance

    steps = [
        {"action": t["action"], "feedback": t["feedback"], "success": t["success"]} for t in state["trials"]
    ]
    return Experience(
        task=state["observation"],
        key=state.get("task_text", ""),
        trajectory=steps,
        outcome="success" if state.get("success") else "failure",
        provenance=Provenance(
            run_id=ctx.run_id,
            episode_id=ctx.episode_id,
            env=ctx.env.name,
            task_id=state["task_id"],
            agent=agent,
        ),
    )
